"""docs/plugins.md is complete: every hook and every method of every base class a plugin
implements or calls, with its exact signature, and each with a test (datasette's rule: a hook
without docs or a test is a bug)."""

from __future__ import annotations

import inspect

import pytest

from adaptool import base, hookspecs
from tests.helpers import REPO

DOCS = (REPO / "docs" / "plugins.md").read_text(encoding="utf-8")
TESTS = "".join(
    p.read_text(encoding="utf-8")
    for root in (REPO / "tests", REPO / "plugins")
    for p in root.rglob("test_*.py")
    if p.name != "test_plugin_docs.py"
)
CLASSES = (
    base.Plugin,
    base.Formatter,
    base.ChatTemplateFormatter,
    base.Quantizer,
    base.PeftMethod,
    base.Logger,
    base.Callback,
    base.TrainingContext,
)


def signature(function) -> str:
    """``name(a, b, *, c=None)``: how docs/plugins.md writes a signature (no self, no types)."""
    parts, star = [], False
    for p in inspect.signature(function).parameters.values():
        if p.name in ("self", "cls"):
            continue
        if p.kind is p.KEYWORD_ONLY and not star:
            parts.append("*")
            star = True
        parts.append(p.name if p.default is p.empty else f"{p.name}={p.default!r}")
    return f"{function.__name__}({', '.join(parts)})"


def methods(cls) -> list:
    found = []
    for name, value in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(value, classmethod):
            value = value.__func__
        if inspect.isfunction(value):
            found.append(value)
    return found


HOOKS = [f for n, f in vars(hookspecs).items() if n.startswith("register_") and callable(f)]
METHODS = [(cls, f) for cls in CLASSES for f in methods(cls)]


@pytest.mark.parametrize("hook", HOOKS, ids=lambda f: f.__name__)
def test_every_hook_is_documented_with_its_signature_and_tested(hook):
    assert f"`{signature(hook)}`" in DOCS, f"docs/plugins.md lacks `{signature(hook)}`"
    assert TESTS.count(hook.__name__) >= 2, f"{hook.__name__} has no test"


@pytest.mark.parametrize(
    ("cls", "method"), METHODS, ids=[f"{c.__name__}.{f.__name__}" for c, f in METHODS]
)
def test_every_base_class_method_is_documented_with_its_signature_and_tested(cls, method):
    shown = signature(method)
    assert f"`{shown}`" in DOCS, f"docs/plugins.md lacks `{shown}` ({cls.__name__})"
    # called (``.name(``) or implemented by a plugin a test uses (``def name(``)
    name = method.__name__
    assert f".{name}(" in TESTS or f"def {name}(" in TESTS, f"{cls.__name__}.{name} has no test"


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_every_class_attribute_a_plugin_sets_is_documented(cls):
    attributes = [
        name
        for name, annotation in vars(cls).get("__annotations__", {}).items()
        if "ClassVar" in str(annotation) and name != "kind"
    ]
    missing = [name for name in attributes if f"`{name}`" not in DOCS]
    assert not missing, f"{cls.__name__}: docs/plugins.md does not explain {missing}"


def test_the_walkthrough_matches_the_example_package():
    """The first-plugin walk-through quotes the sharegpt package: its entry point and names."""
    package = REPO / "plugins" / "adaptool-sharegpt"
    pyproject = (package / "pyproject.toml").read_text(encoding="utf-8")
    module = (package / "adaptool_sharegpt.py").read_text(encoding="utf-8")
    assert (
        'sharegpt = "adaptool_sharegpt"' in pyproject and 'sharegpt = "adaptool_sharegpt"' in DOCS
    )
    for line in ('name = "sharegpt"', "class ShareGPT(ChatTemplateFormatter):", "def messages"):
        assert line in module and line in DOCS, line


def test_the_readme_points_to_the_plugin_docs():
    assert "docs/plugins.md" in (REPO / "README.md").read_text(encoding="utf-8")
