"""Recipe loading and validation: every problem at once, did-you-mean, plugin options,
overrides, path resolution."""

from __future__ import annotations

from pathlib import Path

import pytest

from adaptool import RecipeError
from adaptool.recipe import load_recipe, parse_override, resolve_plugins, validate_recipe
from tests.helpers import write_recipe

MINIMAL = """
[model]
name = "bigscience/bloom-560m"

[data]
source = "quotes.jsonl"
formatter = "quote-tags"

[output]
dir = "out"
"""


def problems(exc: pytest.ExceptionInfo[RecipeError]) -> dict[str, str]:
    return {p.key: p.message for p in exc.value.problems}


def test_minimal_recipe_gets_defaults_and_resolves_paths(tmp_path, registry):
    path = write_recipe(tmp_path, MINIMAL)
    recipe = load_recipe(path)
    assert recipe.model.name == "bigscience/bloom-560m"  # a Hub id stays as it is
    assert not recipe.model.is_local
    assert recipe.data.source == str(tmp_path / "quotes.jsonl")
    assert recipe.data.is_local
    assert recipe.output.dir == str(tmp_path / "out")
    assert recipe.quantization.backend == "none"
    assert recipe.peft.method == "lora"
    assert recipe.peft.options == {
        "use_dora": False,
        "use_rslora": False,
        "init": "default",
        "modules_to_save": None,
        "loraplus_lr_ratio": 1.0,
        "lora_bias": False,
        "eva_rho": 2.0,
    }
    assert recipe.data.options == {
        "quote_column": "quote",
        "tags_column": "tags",
        "separator": " ->: ",
    }
    assert recipe.training.total_epochs == 1.0
    assert recipe.path == path


def test_local_model_path_resolves_against_the_recipe_folder(tmp_path, registry):
    (tmp_path / "recipes" / "assets" / "base").mkdir(parents=True)
    text = MINIMAL.replace("bigscience/bloom-560m", "assets/base")
    recipe = load_recipe(write_recipe(tmp_path / "recipes", text))
    assert recipe.model.name == str(tmp_path / "recipes" / "assets" / "base")
    assert recipe.model.is_local


def test_every_problem_is_reported_at_once(tmp_path, registry):
    text = """
[model]
name = "x"
dtype = "float64"

[peft]
r = 0
target_modules = 3

[data]
source = "d.jsonl"
formatter = "quote-tags"
eval_fraction = 1.5

[training]
learning_rate = "fast"
max_steps = 10
epochs = 2
"""
    with pytest.raises(RecipeError) as err:
        load_recipe(write_recipe(tmp_path, text))
    found = problems(err)
    assert set(found) == {
        "model.dtype",
        "peft.r",
        "peft.target_modules",
        "data.eval_fraction",
        "training.learning_rate",
        "training",
        "output",
    }
    assert found["model.dtype"] == (
        "expected 'auto', 'float32', 'bfloat16' or 'float16', found \"float64\" (string)"
    )
    assert found["peft.r"] == "expected greater than 0, found 0 (integer)"
    assert "found 3 (integer)" in found["peft.target_modules"]
    assert found["training.learning_rate"] == 'expected a valid number, found "fast" (string)'
    assert found["training"] == "set max_steps or epochs, not both"
    assert found["output"] == "missing section: add a [output] table"
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'recipe.toml'} has 7 problems:")
    assert "  - training.learning_rate: expected a valid number" in message


def test_unknown_keys_and_sections_get_did_you_mean(tmp_path, registry):
    text = (
        MINIMAL
        + """
[trainig]
seed = 1

[training]
learnig_rate = 1e-4
"""
    )
    with pytest.raises(RecipeError) as err:
        load_recipe(write_recipe(tmp_path, text))
    found = problems(err)
    assert found["trainig"] == "unknown section; did you mean 'training'?"
    assert found["training.learnig_rate"] == "unknown key; did you mean 'learning_rate'?"


def test_plugin_options_are_validated_by_the_plugins_schema(tmp_path, registry):
    text = MINIMAL.replace(
        'formatter = "quote-tags"', 'formatter = "quote-tags"\nquote_colum = "q"'
    )
    text += """
[quantization]
backend = "bnb-4bit"
quant_type = "nf3"
compute_dtype = "bfloat16"

[peft]
method = "lora"
use_dora = "yes"
"""
    with pytest.raises(RecipeError) as err:
        load_recipe(write_recipe(tmp_path, text))
    found = problems(err)
    assert found["quantization.quant_type"] == (
        "expected 'nf4' or 'fp4' (quantizer 'bnb-4bit' option), found \"nf3\" (string)"
    )
    assert found["peft.use_dora"] == (
        "expected a valid boolean (peft-method 'lora' option), found \"yes\" (string)"
    )
    assert found["data.quote_colum"].startswith(
        "unknown key (neither a [data] key nor an option of formatter 'quote-tags')"
    )
    assert found["data.quote_colum"].endswith("did you mean 'quote_column'?")
    assert len(found) == 3


def test_valid_plugin_options_are_kept(tmp_path, registry):
    text = (
        MINIMAL
        + """
[quantization]
backend = "bnb-4bit"
quant_type = "fp4"
double_quant = false
"""
    )
    recipe = load_recipe(write_recipe(tmp_path, text))
    assert recipe.quantization.options["quant_type"] == "fp4"
    assert recipe.quantization.options["double_quant"] is False
    quantizer = resolve_plugins(recipe).quantizer
    assert quantizer.options.quant_type == "fp4"


def test_unknown_plugin_name_lists_available(tmp_path, registry):
    text = MINIMAL.replace('"quote-tags"', '"quote-tag"') + '[quantization]\nbackend = "gptq"\n'
    with pytest.raises(RecipeError) as err:
        load_recipe(write_recipe(tmp_path, text))
    found = problems(err)
    assert "unknown formatter 'quote-tag'. Did you mean 'quote-tags'?" in found["data.formatter"]
    assert "Available quantizers: bnb-4bit, bnb-8bit, none" in found["quantization.backend"]


def test_cross_section_problems_from_plugins(tmp_path, registry):
    text = (
        MINIMAL + '[quantization]\nbackend = "bnb-8bit"\n[peft]\nuse_dora = true\ninit = "pissa"\n'
    )
    with pytest.raises(RecipeError) as err:
        load_recipe(write_recipe(tmp_path, text))
    found = problems(err)
    assert "8-bit" in found["peft.use_dora"]
    assert "quantized base" in found["peft.init"]


def test_overrides_are_toml_typed(tmp_path, registry):
    path = write_recipe(tmp_path, MINIMAL)
    recipe = load_recipe(
        path,
        [
            "training.max_steps=10",
            "training.learning_rate=1e-3",
            "peft.target_modules=['a', 'b']",
            "data.train_on_prompt=true",
            "hub.repo_id=me/tagger",
            "model.revision=main",
            "peft.use_rslora=true",
        ],
    )
    assert recipe.training.max_steps == 10
    assert recipe.training.learning_rate == 1e-3
    assert recipe.peft.target_modules == ["a", "b"]
    assert recipe.data.train_on_prompt is True
    assert recipe.hub.repo_id == "me/tagger"
    assert recipe.model.revision == "main"  # not TOML: taken as a string
    assert recipe.peft.options["use_rslora"] is True


def test_override_errors_are_reported_like_file_errors(tmp_path, registry):
    path = write_recipe(tmp_path, MINIMAL)
    with pytest.raises(RecipeError) as err:
        load_recipe(path, ["training.max_step=10", "training.seed=one"])
    found = problems(err)
    assert found["training.max_step"] == "unknown key; did you mean 'max_steps'?"
    assert found["training.seed"] == 'expected a valid integer, found "one" (string)'
    with pytest.raises(RecipeError, match=r"expected section\.key=value"):
        parse_override("max_steps")


def test_override_paths_resolve_against_the_current_folder(tmp_path, registry):
    recipe_dir = tmp_path / "recipes"
    recipe_dir.mkdir()
    path = write_recipe(recipe_dir, MINIMAL)
    recipe = load_recipe(path, ["data.source=other.jsonl", "output.dir=runs/x"], cwd=tmp_path)
    assert recipe.data.source == str(tmp_path / "other.jsonl")
    assert recipe.output.dir == str(tmp_path / "runs" / "x")


def test_bad_toml_and_missing_file(tmp_path, registry):
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.toml")
    path = write_recipe(tmp_path, "[model\nname = 1")
    with pytest.raises(RecipeError, match="not valid TOML"):
        load_recipe(path)
    with pytest.raises(RecipeError) as err:
        load_recipe(
            write_recipe(
                tmp_path, "model = 3\n" + MINIMAL.split("[data]")[1].join(["[data]", ""]), "b.toml"
            ),
        )
    assert "expected a [model] table, found 3 (integer)" in str(err.value)


def test_resolved_recipe_round_trips_through_toml(tmp_path, registry):
    text = (
        MINIMAL
        + '[quantization]\nbackend = "bnb-4bit"\n'
        + '[training]\nmax_steps = 5\n[hub]\nrepo_id = "me/x"\n'
    )
    recipe = load_recipe(write_recipe(tmp_path, text))
    again_path = tmp_path / "elsewhere" / "recipe.toml"
    again_path.parent.mkdir()
    again_path.write_text(recipe.to_toml())
    again = load_recipe(again_path)
    assert again.model_dump(exclude={"path"}) == recipe.model_dump(exclude={"path"})


def test_validate_recipe_from_a_dict(registry):
    recipe = validate_recipe(
        {
            "model": {"name": "/abs/base"},
            "data": {"source": "org/ds", "formatter": "text"},
            "output": {"dir": "/tmp/out"},
        },
    )
    assert recipe.data.source == "org/ds" and not recipe.data.is_local
    assert recipe.path is None
    assert Path(recipe.output.dir) == Path("/tmp/out")


def test_values_are_checked_for_range_not_just_type(tmp_path, registry):
    """A learning rate of inf trained to a NaN adapter once; a rank of 10**9 tries to allocate
    a terabyte. Both are typos, reported with the key."""
    path = write_recipe(tmp_path, MINIMAL)
    cases = {
        "training.learning_rate=inf": "training.learning_rate",
        "training.learning_rate=nan": "training.learning_rate",
        "training.learning_rate=1e6": "training.learning_rate",
        "training.epochs=inf": "training.epochs",
        "training.max_steps=10000000000": "training.max_steps",
        "training.seed=-1": "training.seed",
        "training.seed=18446744073709551616": "training.seed",
        "peft.r=1000000000": "peft.r",
        "peft.alpha=inf": "peft.alpha",
        "data.max_length=100000000": "data.max_length",
    }
    for override, key in cases.items():
        with pytest.raises(RecipeError) as err:
            load_recipe(path, [override])
        assert key in problems(err), (override, str(err.value))
    assert load_recipe(path, ["training.learning_rate=5e-4"]).training.learning_rate == 5e-4


def test_unreadable_recipe_files_are_recipe_errors(tmp_path, registry):
    latin = tmp_path / "latin.toml"
    latin.write_bytes(MINIMAL.replace("out", "\xe9t\xe9").encode("latin-1"))
    with pytest.raises(RecipeError, match=r"not UTF-8 text \(byte \d+ is 0xe9\)"):
        load_recipe(latin)
    deep = tmp_path / "deep.toml"
    deep.write_text("x = " + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(RecipeError, match=r"nested too deeply|not valid TOML"):
        load_recipe(deep)


def _refused_with_data(tmp_path, data: str, problem: str) -> None:
    """A recipe whose [data] section is ``data`` is refused, naming ``problem``."""
    path = tmp_path / "r.toml"
    path.write_text(f'[model]\nname = "m"\n[output]\ndir = "o"\n[data]\n{data}\n')
    with pytest.raises(RecipeError, match=problem):
        load_recipe(path)


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (
            'mix = "weights"\n[[data.sources]]\nsource = "a.jsonl"\nformatter = "text"',
            "needs a weight in every source",
        ),
        (
            '[[data.sources]]\nsource = "a.jsonl"\nformatter = "text"\nweight = 2.0',
            'set data.mix = "weights"',
        ),
        (
            'source = "x.jsonl"\n[[data.sources]]\nsource = "a.jsonl"\nformatter = "text"',
            "set it in each source's table",
        ),
        (
            '[[data.sources]]\nsource = "a.jsonl"\nformatter = "text"\ncolumnn = "t"',
            r"data\.sources\[0\]\.columnn",
        ),
    ],
)
def test_a_mixture_is_checked_source_by_source(tmp_path, registry, data, problem):
    _refused_with_data(tmp_path, data, problem)


def test_a_mixture_round_trips_and_resolves_each_sources_path(tmp_path, registry):
    path = tmp_path / "r.toml"
    path.write_text(
        '[model]\nname = "m"\n[output]\ndir = "o"\n[data]\nmax_length = 99\nmix = "weights"\n'
        '[[data.sources]]\nsource = "a.jsonl"\nformatter = "text"\nweight = 3.0\n'
        '[[data.sources]]\nsource = "alice/chats"\nformatter = "chat"\nweight = 1.0\n'
        'chat_template = "zephyr"\n'
    )
    recipe = load_recipe(path)
    first, second = recipe.data.all_sources
    assert first.source == str(tmp_path / "a.jsonl") and second.source == "alice/chats"
    assert (first.max_length, second.max_length) == (99, 99)  # [data]'s keys are defaults
    assert second.options["chat_template"] == "zephyr"
    assert recipe.data.source == first.source and recipe.data.formatter == "text"
    again = tmp_path / "again.toml"
    again.write_text(recipe.to_toml())
    assert load_recipe(again).data == recipe.data


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ('source = "a.jsonl"\nformatter = "text"\nmix = "weights"', r"data\.mix"),
        ('source = "a.jsonl"\nformatter = "text"\nweight = 2.0', r"data\.weight"),
        (
            '[[data.sources]]\nsource = "a.jsonl"\nformatter = "text"\nmix = "weights"',
            r"data\.sources\[0\]\.mix: belongs in \[data\]",
        ),
    ],
)
def test_mixture_keys_without_a_mixture_are_refused(tmp_path, registry, data, problem):
    _refused_with_data(tmp_path, data, problem)


def test_a_bounded_number_or_auto_is_one_problem_naming_both(tmp_path, registry):
    """``micro_batch_tokens`` is a number of at least 0 or "auto": a bad value is one
    problem on the key itself, naming both."""
    text = MINIMAL + '\n[training]\nmicro_batch_tokens = -1\ncompile = "maybe"\n'
    with pytest.raises(RecipeError) as err:
        load_recipe(write_recipe(tmp_path, text))
    assert problems(err) == {
        "training.micro_batch_tokens": (
            "expected greater than or equal to 0 or 'auto', found -1 (integer)"
        ),
        "training.compile": "expected a valid boolean or 'auto', found \"maybe\" (string)",
    }
