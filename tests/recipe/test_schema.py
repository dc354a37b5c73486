"""The recipe schema: a Recipe is plain, frozen data; to_dict / to_toml (plugin options inline,
no None); TrainingSection.total_epochs; local paths."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from pydantic import ValidationError

from adaptool.recipe import validate_recipe
from adaptool.recipe.schema import (
    DataSection,
    HubSection,
    ModelSection,
    OutputSection,
    Recipe,
    TrainingSection,
)


def raw(tmp_path: Path) -> dict:
    return {
        "model": {"name": str(tmp_path / "base"), "dtype": "float32"},
        "quantization": {"backend": "bnb-4bit", "quant_type": "fp4"},
        "peft": {"r": 4, "init": "gaussian", "target_modules": ["query_key_value"]},
        "data": {
            "source": str(tmp_path / "rows.jsonl"),
            "formatter": "quote-tags",
            "separator": " => ",
        },
        "training": {"max_steps": 5},
        "output": {"dir": str(tmp_path / "out")},
    }


def test_a_recipe_is_plain_frozen_data(tmp_path, registry):
    recipe = validate_recipe(raw(tmp_path))
    assert recipe.model_config["frozen"] is True
    for name in ("formatter", "quantizer", "peft_method", "method", "plugins"):
        assert not hasattr(recipe, name), name
    with pytest.raises(ValidationError):
        recipe.output = OutputSection(dir="/elsewhere")
    with pytest.raises(ValidationError):
        recipe.training.max_steps = 9
    # plugin options are plain values, not plugin objects
    assert recipe.quantization.options["quant_type"] == "fp4"
    assert isinstance(recipe.quantization.options, dict)


def test_to_dict_inlines_plugin_options_and_drops_none(tmp_path, registry):
    recipe = validate_recipe(raw(tmp_path))
    data = recipe.to_dict()
    assert set(data) == {"model", "quantization", "peft", "data", "training", "output"}
    assert data["quantization"] == {
        "backend": "bnb-4bit",
        "quant_type": "fp4",
        "double_quant": True,
        "compute_dtype": "bfloat16",
        "quant_storage": "auto",
    }  # skip_modules is None: dropped
    assert data["peft"]["init"] == "gaussian"
    assert "options" not in data["peft"]
    assert "modules_to_save" not in data["peft"]
    assert data["data"]["separator"] == " => "
    assert data["data"]["quote_column"] == "quote"
    assert "revision" not in data["model"]
    assert data["training"]["max_steps"] == 5
    assert "epochs" not in data["training"]


def test_to_dict_keeps_a_hub_section_without_its_none_keys(tmp_path, registry):
    recipe = validate_recipe({**raw(tmp_path), "hub": {"repo_id": "me/adapter"}})
    assert recipe.to_dict()["hub"] == {"repo_id": "me/adapter", "private": True}


def test_to_toml_round_trips_through_tomllib_and_validation(tmp_path, registry):
    recipe = validate_recipe(raw(tmp_path))
    text = recipe.to_toml()
    assert not text.startswith("#")  # no path, no header
    parsed = tomllib.loads(text)
    assert parsed == recipe.to_dict()
    assert validate_recipe(parsed) == recipe


def test_to_toml_names_the_file_it_was_resolved_from(tmp_path, registry):
    path = tmp_path / "r.toml"
    recipe = validate_recipe(raw(tmp_path), path=path)
    text = recipe.to_toml()
    assert text.splitlines()[0] == f"# resolved from {path.resolve()}"
    assert tomllib.loads(text) == recipe.to_dict()


@pytest.mark.parametrize(
    ("peft", "effective"),
    [
        ({"method": "ia3", "target_modules": "all-linear"}, {"target_modules": "all-linear"}),
        ({"method": "loha", "r": 4}, {"r": 4, "alpha": 8.0, "dropout": 0.0}),
        ({"method": "vera"}, {"r": 256, "dropout": 0.0}),
    ],
)
def test_the_written_recipe_trains_what_the_original_did(tmp_path, registry, peft, effective):
    """recipe.toml beside an adapter re-runs as the recipe ran: the common [peft] keys a recipe
    left unset stay unset (the method's defaults apply), never adaptool's defaults written in."""
    from adaptool.recipe.resolve import resolve_plugins

    data = raw(tmp_path) | {"peft": peft, "quantization": {"backend": "none"}}
    recipe = validate_recipe(data)
    again = validate_recipe(tomllib.loads(recipe.to_toml()))
    for one in (recipe, again):
        common = resolve_plugins(one).method.common(one.peft)
        assert {k: common[k] for k in effective} == effective
    assert again == recipe


def test_a_callback_without_options_stays_in_the_written_recipe(tmp_path, registry):
    data = raw(tmp_path) | {"callbacks": {"best-checkpoint": {}}, "logging": {"to": []}}
    data["data"] = data["data"] | {"eval_fraction": 0.1}
    recipe = validate_recipe(data)
    written = tomllib.loads(recipe.to_toml())
    assert written["callbacks"] == {
        "best-checkpoint": {"metric": "eval_loss", "mode": "auto", "rows": 64, "max_new_tokens": 64}
    }
    assert "logging" not in written and validate_recipe(written) == recipe


def test_total_epochs():
    assert TrainingSection().total_epochs == 1.0
    assert TrainingSection(epochs=2.5).total_epochs == 2.5
    assert TrainingSection(max_steps=10).total_epochs is None
    with pytest.raises(ValidationError, match="set max_steps or epochs, not both"):
        TrainingSection(max_steps=10, epochs=2.0)


@pytest.mark.parametrize(
    ("name", "local"),
    [("/models/bloom", True), ("bigscience/bloom-560m", False), ("models/bloom", False)],
)
def test_is_local_means_an_absolute_path(name, local):
    assert ModelSection(name=name).is_local is local
    assert DataSection(source=name, formatter="text").is_local is local


def test_sections_refuse_unknown_keys_and_wrong_types():
    with pytest.raises(ValidationError):
        ModelSection(name="x", revison="main")
    with pytest.raises(ValidationError):
        TrainingSection(max_steps="10")
    with pytest.raises(ValidationError):
        HubSection(private="yes")


def test_a_recipe_built_directly_has_default_sections():
    recipe = Recipe(
        model=ModelSection(name="/m"),
        data=DataSection(source="/d.jsonl", formatter="text"),
        output=OutputSection(dir="/o"),
    )
    assert recipe.hub is None
    assert recipe.quantization.backend == "none"
    assert recipe.peft.method == "lora"
    assert "hub" not in recipe.to_dict()


def test_remote_code_is_off_unless_a_recipe_asks(tmp_path):
    """trust_remote_code defaults to false, and the loaders pass what the recipe says."""
    import inspect

    from adaptool.modeling import load_base, load_tokenizer
    from adaptool.recipe.schema import ModelSection

    assert ModelSection(name="org/model").trust_remote_code is False
    for loader in (load_base, load_tokenizer):
        default = inspect.signature(loader).parameters["trust_remote_code"].default
        assert default is False, loader.__name__
