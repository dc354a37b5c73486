"""The built-in PEFT methods."""

from __future__ import annotations

import pytest
import torch

from adaptool.base import Callback, RunInfo
from tests.helpers import load, make


@pytest.mark.parametrize(
    ("options", "dora", "rslora"),
    [({}, False, False), ({"use_dora": True}, True, False), ({"use_rslora": True}, False, True)],
)
def test_lora_config_wraps_the_base(registry, plugins, tiny_bloom_dir, options, dora, rslora):
    from peft import get_peft_model

    from adaptool.recipe import PeftSection

    method = make(registry, "peft-method", "lora", **options)
    config = method.peft_config(PeftSection(r=4, alpha=8.0, dropout=0.0), RunInfo())
    assert (config.r, config.lora_alpha, config.use_dora, config.use_rslora) == (
        4,
        8.0,
        dora,
        rslora,
    )
    model = get_peft_model(load(tiny_bloom_dir, make(registry, "quantizer", "none")), config)
    # auto targets: peft's default for bloom, query_key_value (64 -> 192) in each of 2 layers
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    magnitude = 192 * 2 if dora else 0
    assert trainable == 2 * 4 * (64 + 192) + magnitude
    assert config.target_modules == {"query_key_value"}


def test_lora_explicit_targets_and_init(registry):
    from adaptool.recipe import PeftSection

    method = make(registry, "peft-method", "lora", init="gaussian")
    config = method.peft_config(PeftSection(target_modules=["dense"], bias="lora_only"), RunInfo())
    assert config.init_lora_weights == "gaussian"
    assert config.target_modules == {"dense"} and config.bias == "lora_only"


@pytest.mark.parametrize(
    ("method", "lines"),
    [
        # AdaLoRA: the importance scores and the final rank pattern (fixed at step 5) carry over
        (
            "adalora",
            'init_r = 6\ntarget_r = 2\ntinit = 1\ntfinal = 3\ntarget_modules = "all-linear"',
        ),
        # PiSSA: the initial adapter kept for the conversion at save
        ("lora", 'r = 4\ninit = "pissa"\ntarget_modules = "all-linear"'),
    ],
)
def test_interrupted_then_resumed_equals_uninterrupted(
    tmp_path, tiny_bloom_dir, plugins, method, lines
):
    from safetensors.torch import load_file

    from adaptool.recipe import load_recipe
    from adaptool.training.run import train
    from tests.helpers import InterruptAt, method_recipe

    path = method_recipe(tmp_path, tiny_bloom_dir, method, lines, steps=8)
    path.write_text(path.read_text().replace("save_steps = 0", "save_steps = 2"))
    whole = train(load_recipe(path, [f"output.dir={tmp_path / 'a'}"]))
    recipe = load_recipe(path, [f"output.dir={tmp_path / 'b'}"])
    first = train(recipe, reporter=InterruptAt(6))
    assert first.interrupted and first.step == 6
    resumed = train(recipe, resume=True)
    a = load_file(str(whole.output_dir / "adapter_model.safetensors"))
    b = load_file(str(resumed.output_dir / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)
    assert max((a[k] - b[k]).abs().max().item() for k in a if a[k].numel()) <= 1e-6


def test_loraplus_gives_the_b_matrices_their_own_learning_rate(registry, tiny_bloom_dir):
    from peft import get_peft_model

    from adaptool.recipe import PeftSection

    method = make(registry, "peft-method", "lora", loraplus_lr_ratio=16.0)
    config = method.peft_config(PeftSection(r=4), RunInfo())
    model = get_peft_model(load(tiny_bloom_dir, make(registry, "quantizer", "none")), config)
    slow, fast = method.param_groups(model, 1e-3)
    assert (slow["lr"], fast["lr"]) == (1e-3, 16e-3)
    names = {id(p): n for n, p in model.named_parameters()}
    assert fast["params"] and all("lora_B" in names[id(p)] for p in fast["params"])
    assert slow["params"] and all("lora_A" in names[id(p)] for p in slow["params"])


class Capture(Callback):
    """Keeps the trained model's logits at the end of the run (before anything is saved)."""

    name = "capture"
    logits = None

    def on_end(self, context):
        from tests.helpers import logits_of

        context.model.eval()
        Capture.logits = logits_of(context.model)
        return {}


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_pissa_and_olora_are_saved_as_a_plain_lora_on_the_original_base(
    tmp_path, tiny_bloom_dir, init
):
    """Trained on a base they rewrote (the residual), saved converted: plain peft adding the
    rank-2r LoRA to the original base computes what the trained model computed."""
    import json
    import types

    import adaptool
    from adaptool.plugins import load_plugins, use_plugins
    from adaptool.recipe import load_recipe
    from adaptool.training.run import train
    from tests.helpers import adapter_logits, method_recipe

    module = types.ModuleType("capture_plugin")
    module.register_callbacks = adaptool.hookimpl(lambda register: register(Capture))
    use_plugins(load_plugins(entry_points=False, strict=True, disabled=[], extra=[module]))
    lines = f'r = 4\ninit = "{init}"\ntarget_modules = "all-linear"'
    path = method_recipe(tmp_path, tiny_bloom_dir, "lora", lines)
    path.write_text(path.read_text() + "\n[callbacks.capture]\n")
    out = train(load_recipe(path)).output_dir
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["init_lora_weights"] is True
    theirs = adapter_logits(out, tiny_bloom_dir)  # the original base, as saved on disk
    torch.testing.assert_close(theirs, Capture.logits, atol=1e-4, rtol=0)


def test_loftq_starts_lora_at_the_4bit_error_and_trains(tmp_path, tiny_bloom_dir, plugins):
    """init = "loftq" on a bnb-4bit base: LoRA starts non-zero (it corrects the quantization
    error of the original weights), trains, and the adapter loads in plain peft. peft computes
    LoftQ on a GPU only: without one, the recipe is refused, saying so."""
    from safetensors.torch import load_file

    from adaptool.artifacts.loading import open_target
    from adaptool.errors import RecipeError
    from adaptool.recipe import load_recipe
    from adaptool.training.run import train
    from tests.helpers import logits_of, method_recipe

    lines = 'r = 4\ninit = "loftq"\ntarget_modules = "all-linear"'
    path = method_recipe(tmp_path, tiny_bloom_dir, "lora", lines, backend="bnb-4bit", steps=2)
    if not torch.cuda.is_available():
        with pytest.raises(RecipeError, match="on a GPU \\(CUDA or XPU\\) only"):
            load_recipe(path)
        return
    result = train(load_recipe(path))
    weights = load_file(str(result.output_dir / "adapter_model.safetensors"))
    assert all(v.abs().sum() > 0 for k, v in weights.items() if "lora_A" in k)
    assert len([r for r in result.records if "loss" in r]) == 2
    assert logits_of(open_target(result.output_dir).model).isfinite().all()


@pytest.mark.parametrize(
    ("method", "lines", "backend", "problem"),
    [
        ("ia3", "r = 16", "none", "does not use r"),
        ("prompt-tuning", 'target_modules = "all-linear"', "none", "does not use target_modules"),
        ("hra", "", "bnb-4bit", "HRA cannot be trained on a bnb-4bit base"),
        ("lora", 'init = "loftq"', "none", 'needs quantization.backend = "bnb-4bit"'),
        ("lora", 'init = "pissa"', "bnb-4bit", "cannot run on a quantized base"),
        ("adalora", "tinit = 5\ntfinal = 2", "none", "AdaLoRA needs steps between tinit"),
        ("ln-tuning", 'target_modules = "all-linear"', "none", "tunes layer norms"),
    ],
)
def test_settings_a_method_cannot_take_are_recipe_problems(
    tmp_path, tiny_bloom_dir, plugins, method, lines, backend, problem
):
    from adaptool.errors import RecipeError
    from adaptool.recipe import load_recipe
    from tests.helpers import method_recipe

    path = method_recipe(tmp_path, tiny_bloom_dir, method, lines, backend=backend)
    with pytest.raises(RecipeError, match=problem):
        load_recipe(path)


def test_check_shows_the_method_and_flags_one_that_cannot_merge(tmp_path, tiny_bloom_dir, plugins):
    from adaptool.check import check
    from adaptool.recipe import load_recipe
    from tests.helpers import method_recipe

    path = method_recipe(tmp_path, tiny_bloom_dir, "prefix-tuning", "num_virtual_tokens = 8")
    report = check(load_recipe(path))
    assert (report.method_title, report.hyperparameters) == ("prefix tuning", {"virtual_tokens": 8})
    assert any("cannot be merged" in w for w in report.warnings)
    path = method_recipe(tmp_path, tiny_bloom_dir, "ia3", 'target_modules = "all-linear"')
    report = check(load_recipe(path))
    assert report.method_title == "IA³" and not any("merged" in w for w in report.warnings)


def test_eva_initialises_from_the_first_batches_and_redistributes_ranks(
    tmp_path, tiny_bloom_dir, plugins
):
    """init = "eva": LoRA A from the SVD of each layer's inputs on the run's first batches;
    ranks move between layers (rank_pattern) within r * eva_rho; plain peft loads it back."""
    import json

    from adaptool.artifacts.loading import open_target
    from adaptool.recipe import load_recipe
    from adaptool.training.run import train
    from tests.helpers import adapter_logits, logits_of, method_recipe

    lines = 'r = 4\ninit = "eva"\neva_rho = 2.0\ntarget_modules = "all-linear"'
    path = method_recipe(tmp_path, tiny_bloom_dir, "lora", lines, steps=2)
    out = train(load_recipe(path)).output_dir
    config = json.loads((out / "adapter_config.json").read_text())
    ranks = list((config.get("rank_pattern") or {}).values())
    assert ranks and all(1 <= r <= 8 for r in ranks) and len(set(ranks)) > 1
    ours = logits_of(open_target(out).model)
    torch.testing.assert_close(adapter_logits(out, tiny_bloom_dir), ours, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("method", "lines", "reason"),
    [
        ("lora", 'target_modules = ["no_such_layer"]', "no_such_layer"),
        ("boft", 'block_num = 2\ntarget_modules = "all-linear"', "boft_block_size"),
        ("lora", 'lora_bias = true\nuse_dora = true\ntarget_modules = "all-linear"', "DoRA"),
    ],
)
def test_settings_peft_refuses_are_one_paragraph_at_check_and_train(
    tmp_path, tiny_bloom_dir, plugins, method, lines, reason
):
    from tests.helpers import cli, method_recipe

    path = method_recipe(tmp_path, tiny_bloom_dir, method, lines)
    for command in ("check", "train"):
        result = cli(plugins, command, path)
        assert result.exit_code == 2, result.output
        text = " ".join(result.output.split())
        assert "peft cannot apply" in text and reason in text and "Traceback" not in text
    assert not (tmp_path / "out").exists()


def test_check_counts_the_parameters_the_method_trains(tmp_path, tiny_bloom_dir, plugins):
    from adaptool.check import check
    from adaptool.recipe import load_recipe
    from tests.helpers import method_recipe

    path = method_recipe(tmp_path, tiny_bloom_dir, "lora", 'r = 4\ntarget_modules = "all-linear"')
    # all-linear on 2 layers: query_key_value, dense, dense_h_to_4h, dense_4h_to_h
    per_layer = (64 + 192) + (64 + 64) + (64 + 256) + (256 + 64)
    assert check(load_recipe(path)).trainable_params == 2 * 4 * per_layer


def test_an_init_adapter_of_another_method_is_refused(tmp_path, tiny_bloom_dir, plugins):
    from adaptool.errors import ModelError
    from adaptool.recipe import load_recipe
    from adaptool.training.run import train
    from tests.helpers import method_recipe

    lora = method_recipe(tmp_path, tiny_bloom_dir, "lora", "r = 4", steps=1)
    first = train(load_recipe(lora, [f"output.dir={tmp_path / 'lora'}"])).output_dir
    path = method_recipe(tmp_path, tiny_bloom_dir, "ia3", "", steps=1)
    with pytest.raises(ModelError, match="is a LORA adapter, but the recipe trains with IA³"):
        train(load_recipe(path, [f"output.dir={tmp_path / 'ia3'}"]), init_adapter=first)


def test_pissa_started_from_an_adapter_is_not_converted_again(tmp_path, tiny_bloom_dir, plugins):
    """A converted PiSSA adapter is a plain LoRA on the original base: continuing it (with
    --init-adapter) trains and saves it as such, with no initial state to convert against."""
    import json

    from adaptool.recipe import load_recipe
    from adaptool.training.run import train
    from tests.helpers import adapter_logits, method_recipe

    lines = 'r = 4\ninit = "pissa"\ntarget_modules = "all-linear"'
    path = method_recipe(tmp_path, tiny_bloom_dir, "lora", lines, steps=2)
    first = train(load_recipe(path, [f"output.dir={tmp_path / 'a'}"])).output_dir
    second = train(load_recipe(path, [f"output.dir={tmp_path / 'b'}"]), init_adapter=first)
    out = second.output_dir
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 8  # not 16
    assert not (out / "checkpoints" / "initial").exists()
    assert adapter_logits(out, tiny_bloom_dir).isfinite().all()


def test_resuming_pissa_without_its_initial_adapter_is_refused_before_training(
    tmp_path, tiny_bloom_dir, plugins
):
    import shutil

    from adaptool.errors import AdaptoolError
    from adaptool.recipe import load_recipe
    from adaptool.training.run import train
    from tests.helpers import InterruptAt, method_recipe

    lines = 'r = 4\ninit = "pissa"\ntarget_modules = "all-linear"'
    path = method_recipe(tmp_path, tiny_bloom_dir, "lora", lines, steps=6)
    recipe = load_recipe(path)
    assert train(recipe, reporter=InterruptAt(3)).interrupted
    shutil.rmtree(tmp_path / "out" / "checkpoints" / "initial")
    with pytest.raises(AdaptoolError, match="the adapter as initialised, is missing"):
        train(recipe, resume=True)
