"""The shape of the package: no import cycles among adaptool's own modules (imports inside
functions count; only ``if TYPE_CHECKING:`` imports are aside), tests mirror the modules, and
``import adaptool`` stays light."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).parent.parent / "adaptool"
TESTS = Path(__file__).parent


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(name: str) -> set[str]:
    """adaptool modules that module ``name`` imports, anywhere in it but under TYPE_CHECKING."""
    path = MODULES[name]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in MODULES else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {m for m in found if m in MODULES and m != name}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path that returns to its start, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := walk(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := walk(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_imports_inside_functions_count_and_type_checking_ones_do_not():
    graph = {name: imports_of(name) for name in MODULES}
    # adaptool.cli.train imports the training library inside its command function
    assert "adaptool.training.run" in graph["adaptool.cli.train"]
    # adaptool.base names the recipe only for type checking
    assert "adaptool.recipe.schema" not in graph["adaptool.base"]


def test_no_import_cycles_among_adaptools_modules():
    graph = {name: imports_of(name) for name in MODULES}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


#: modules without logic of their own to test (definitions, re-exports, thin terminal output)
NO_LOGIC = {
    "adaptool",
    "adaptool.hookspecs",
    "adaptool.artifacts",
    "adaptool.builtin",
    "adaptool.hub",
    "adaptool.merging",
    "adaptool.recipe",
    "adaptool.training",
    "adaptool.serving",
    "adaptool.cli.options",
    "adaptool.cli.output",
    "adaptool.builtin.commands",
    "adaptool.testing",
}


#: modules whose tests live under another name (the Hub commands are driven end to end by the
#: Hub tests, against the local Hub server)
COVERED_BY = {
    "adaptool.cli": "cli/test_app.py",
    "adaptool.__main__": "cli/test_plugins.py",  # `python -m adaptool plugins install ...`
    "adaptool.cli.push": "hub/test_push.py",
    "adaptool.cli.pull": "hub/test_pull.py",
}


def test_tests_mirror_the_package():
    """Every module with logic has its test module at the mirrored path: adaptool/a/b.py ->
    tests/a/test_b.py (commands: tests/cli/test_<command>.py)."""
    missing = []
    for name, path in sorted(MODULES.items()):
        if name in NO_LOGIC:
            continue
        relative = path.relative_to(PACKAGE)
        expected = TESTS / relative.parent / f"test_{relative.stem}.py"
        if name in COVERED_BY:
            expected = TESTS / COVERED_BY[name]
        if not expected.is_file():
            missing.append(str(expected.relative_to(TESTS.parent)))
    assert not missing, "modules without a test module: " + ", ".join(missing)


def test_import_adaptool_stays_light():
    code = (
        "import sys, adaptool\n"
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'bitsandbytes', 'datasets') "
        "if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
