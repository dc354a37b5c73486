"""Property-based: any recipe document and any --set value gives a Recipe or adaptool's own
RecipeError whose every problem names a key path — never another exception."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adaptool.errors import RecipeError
from adaptool.plugins import load_plugins, use_plugins
from adaptool.recipe import validate_recipe
from adaptool.recipe.schema import SECTIONS

#: one plugin set and one folder for every example (hypothesis reuses the test's fixtures)
PLUGINS = load_plugins(entry_points=False, strict=False, disabled=[])
FOLDER = Path(tempfile.mkdtemp(prefix="adaptool-fuzz-"))

KEYS = sorted(
    {key for section in SECTIONS.values() for key in section.model_fields}
    | {"quant_type", "use_dora", "init", "column", "threshold", "on_bad_row", "formatter"}
)
scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(["lora", "none", "bnb-4bit", "quote-tags", "text", "auto", "all-linear"]),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)
sections = st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=10), values, max_size=6)
documents = st.dictionaries(
    st.sampled_from([*SECTIONS, "extra"]) | st.text(max_size=8),
    sections | values,
    max_size=7,
)
overrides = st.lists(
    st.builds(
        lambda section, key, value: f"{section}.{key}={value}",
        st.sampled_from([*SECTIONS, "x"]),
        st.sampled_from(KEYS),
        st.text(max_size=20),
    )
    | st.text(max_size=30),
    max_size=3,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=documents, sets=overrides)
def test_the_validator_raises_only_recipe_errors_naming_keys(document, sets):
    use_plugins(PLUGINS)
    try:
        validate_recipe(document, path=FOLDER / "r.toml", overrides=sets, cwd=FOLDER)
    except RecipeError as exc:
        assert exc.problems
        for problem in exc.problems:
            assert problem.key, f"a problem without a key: {problem}"


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.text(max_size=40) | st.sampled_from(["~nosuchuser/x", "a" * 5000, "../" * 3]),
    source=st.text(max_size=40) | st.sampled_from(["~nosuchuser/d.jsonl", "b" * 5000]),
)
def test_any_model_name_and_data_source_validate_or_are_recipe_errors(name, source):
    use_plugins(PLUGINS)
    document = {
        "model": {"name": name},
        "data": {"source": source, "formatter": "text"},
        "output": {"dir": "out"},
    }
    try:
        validate_recipe(document, path=FOLDER / "r.toml", cwd=FOLDER)
    except RecipeError as exc:
        assert all(problem.key for problem in exc.problems)
