"""The README's two commands are the ones CI and users run."""

from __future__ import annotations

import re

from tests.helpers import REPO


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", section)


def test_readme_has_exactly_two_commands():
    commands = readme_commands()
    assert len(commands) == 2
    install, tests = commands
    assert "adaptool check recipes/tiny-tagger.toml" in install or "adaptool train" in install
    assert "pytest" in tests


def test_ci_runs_the_readme_test_command_verbatim():
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert readme_commands()[1] in ci.splitlines()


def test_the_layout_section_matches_the_folders():
    """Every package folder and every module of adaptool is named in the README's Layout block
    (folders as ``name/``, modules by file name), and everything it names exists."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = text.split("## Layout", 1)[1].split("```", 2)[1].split("\nplugins/", 1)[0]
    package = REPO / "adaptool"
    folders = {p.name for p in package.iterdir() if (p / "__init__.py").is_file()}
    named_folders = set(re.findall(r"^  (\w+)/", block, re.M))
    assert named_folders == folders
    named_files = set(re.findall(r"\b(\w+\.py)\b", block))
    modules = {p.name for p in package.rglob("*.py")}
    assert named_files <= modules, named_files - modules
    for folder in ("recipe", "artifacts", "training", "merging", "hub"):
        for module in (package / folder).glob("*.py"):
            if module.name != "__init__.py":
                assert module.name in named_files, f"{folder}/{module.name} is not in Layout"
    for module in package.glob("*.py"):
        assert module.name in named_files, f"{module.name} is not in Layout"


def test_every_test_the_reliability_doc_names_exists():
    """docs/reliability.md promises only what a test shows: each test it names is there."""
    text = (REPO / "docs" / "reliability.md").read_text(encoding="utf-8")
    named = re.findall(r"`(tests/[\w/]+\.py)(?:::(\w+))?", text)
    assert len(named) > 20
    for path, name in named:
        source = REPO / path
        assert source.is_file(), path
        if name:
            assert f"def {name}(" in source.read_text(encoding="utf-8"), f"{path}::{name}"
