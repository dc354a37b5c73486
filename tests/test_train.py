"""adaptool train on tiny models built in the tests: quantized and not, masking, resume,
Ctrl-C, refusals, the output dir and its manifest."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from adaptool import AdaptoolError, DataError, RecipeError
from adaptool.errors import OutputExists
from adaptool.recipe import load_recipe
from adaptool.training.progress import Reporter
from adaptool.training.run import train
from tests.conftest import DATA, write_recipe


def recipe_file(tmp_path, base, *, backend="none", steps=12, extra="", source=None, name="r.toml"):
    text = f"""
[model]
name = "{base}"
dtype = "float32"

[quantization]
backend = "{backend}"
{"compute_dtype = 'float32'" if backend == "bnb-4bit" else ""}

[peft]
r = 8
alpha = 16
dropout = 0.1
target_modules = "all-linear"

[data]
source = "{source or DATA / "quotes.jsonl"}"
formatter = "quote-tags"
eval_fraction = 0.25
max_length = 96

[training]
batch_size = 2
gradient_accumulation_steps = 2
learning_rate = 3e-2
warmup_steps = 2
max_steps = {steps}
logging_steps = 1
save_steps = 4
seed = 7
{extra}

[output]
dir = "out"
"""
    return write_recipe(tmp_path, text, name)


def run(tmp_path, base, *, overrides=(), **kw):
    path = recipe_file(tmp_path, base, **kw)
    return train(load_recipe(path, list(overrides)))


def records(out):
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


@pytest.mark.parametrize("backend", ["none", "bnb-8bit", "bnb-4bit", "bf16", "bnb-8bit+bf16"])
def test_training_runs_and_the_loss_falls(tmp_path, tiny_bloom_dir, registry, backend):
    # "+bf16": bf16 base weights (precision bf16 with model.dtype auto) under fp32 adapters, as
    # precision "auto" chooses on CPUs with native bf16; a bf16 k-bit base stays bf16
    backend, _, bf16 = backend.partition("+")
    if backend == "bf16":
        backend, bf16 = "none", "bf16"
    overrides = ["model.dtype='auto'", "training.precision='bf16'"] if bf16 else []
    result = run(tmp_path, tiny_bloom_dir, backend=backend, steps=16, overrides=overrides)
    if bf16:
        assert result.manifest.base_model.dtype == "bfloat16"
        assert result.manifest.training["precision_used"] == "bf16"
    assert not result.interrupted and result.step == 16
    losses = [r["loss"] for r in records(result.output_dir) if "loss" in r]
    assert len(losses) == 16
    # a random tiny base starts near uniform (ln 400 = 5.99 nats); the adapter must move it
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.4, losses
    assert result.eval_loss is not None
    weights = load_file(str(result.output_dir / "adapter_model.safetensors"))
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in weights.items())
    assert all(v.dtype == torch.float32 for v in weights.values())  # adapters stay fp32
    if backend != "none":  # the k-bit or bf16 base stays frozen: only LoRA tensors are saved
        assert all("lora_" in k for k in weights)


def test_output_dir_holds_everything_and_the_manifest_is_true(tmp_path, tiny_bloom_dir, registry):
    result = run(tmp_path, tiny_bloom_dir, steps=8)
    out = result.output_dir
    for name in (
        "adapter_config.json",
        "adapter_model.safetensors",
        "tokenizer.json",
        "recipe.toml",
        "metrics.jsonl",
        "loss.png",
        "adaptool.json",
    ):
        assert (out / name).is_file(), name
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob("*.tmp")) and not (out / ".final.tmp").exists()
    manifest = json.loads((out / "adaptool.json").read_text())
    assert manifest["base_model"]["name"] == str(tiny_bloom_dir)
    assert manifest["base_model"]["content_hash"].startswith("sha256:")
    assert manifest["quantization"]["backend"] == "none"
    assert manifest["peft"]["method"] == "lora" and manifest["peft"]["r"] == 8
    # all-linear on 2 layers: query_key_value, dense, dense_h_to_4h, dense_4h_to_h
    per_layer = (64 + 192) + (64 + 64) + (64 + 256) + (256 + 64)
    assert manifest["peft"]["trainable_params"] == 2 * 8 * per_layer
    assert manifest["data"]["source"] == str(DATA / "quotes.jsonl")
    assert (
        manifest["data"]["rows"],
        manifest["data"]["train_rows"],
        manifest["data"]["eval_rows"],
    ) == (8, 6, 2)
    assert len(manifest["data"]["fingerprint"]) == 16
    assert manifest["formatter"] == {
        "name": "quote-tags",
        "version": "1",
        "options": {"quote_column": "quote", "tags_column": "tags", "separator": " ->: "},
    }
    assert manifest["seed"] == 7 and manifest["training"]["steps"] == 8
    assert manifest["libraries"]["torch"] == torch.__version__
    assert manifest["results"]["train_loss"] == records(out)[-1]["loss"]
    assert manifest["results"]["eval_loss"] == result.eval_loss
    assert manifest["results"]["wall_time_s"] > 0
    assert manifest["recipe"]["path"] == str(tmp_path / "r.toml")
    # the resolved recipe reloads to the same settings
    again = load_recipe(out / "recipe.toml")
    assert again.training.max_steps == 8 and again.model.name == str(tiny_bloom_dir)


def test_adapter_loads_with_plain_peft_and_matches_adaptool(tmp_path, tiny_bloom_dir, registry):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from adaptool.artifacts.loading import open_target

    result = run(tmp_path, tiny_bloom_dir, steps=6)
    base = AutoModelForCausalLM.from_pretrained(str(tiny_bloom_dir), dtype=torch.float32)
    plain = PeftModel.from_pretrained(base, str(result.output_dir)).eval()
    ours = open_target(result.output_dir).model
    ids = torch.tensor([[5, 17, 33, 9, 100, 41]])
    with torch.no_grad():
        a, b = plain(ids).logits, ours(ids).logits
        with plain.disable_adapter():
            base_logits = plain(ids).logits
    assert torch.equal(a, b)
    assert not torch.allclose(a, base_logits)  # the adapter does something


def test_loss_is_taken_on_completion_tokens_only(tokenizer):
    from adaptool.base import Example
    from adaptool.encoding import encode_examples
    from adaptool.testing import make_tiny_bloom
    from adaptool.training.batching import collate
    from adaptool.training.fit import loss_sum as _loss_sum

    model = make_tiny_bloom(None, tokenizer)
    examples = [Example("“Knowledge is power.” ->: ", "['knowledge']"), Example("“Hi” ->: ", "[]")]
    encoded = encode_examples(examples, tokenizer, max_length=64)
    batch = collate(encoded, tokenizer.pad_token_id)
    with torch.no_grad():
        total = _loss_sum(model, batch)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    expected = 0.0
    for row, e in enumerate(encoded):
        n_prompt = e.prompt_tokens
        for pos in range(n_prompt, len(e.input_ids)):  # completion tokens (and EOS) only
            log_probs = torch.log_softmax(logits[row, pos - 1], dim=-1)
            expected -= log_probs[e.input_ids[pos]].item()
    assert total.item() == pytest.approx(expected, rel=1e-5)


def test_padding_to_a_multiple_changes_no_row_s_loss(tokenizer, monkeypatch):
    from adaptool.base import Example
    from adaptool.encoding import encode_examples
    from adaptool.testing import make_tiny_bloom
    from adaptool.training import batching
    from adaptool.training.fit import loss_sum as _loss_sum

    model = make_tiny_bloom(None, tokenizer).eval()
    examples = [Example("“A” ->: ", "['x', 'y']"), Example("“Be yourself.” ->: ", "[]")]
    encoded = encode_examples(examples, tokenizer, max_length=64)
    longest = max(len(e.input_ids) for e in encoded)
    padded = batching.collate(encoded, tokenizer.pad_token_id)
    assert padded["input_ids"].shape[1] % batching.PAD_MULTIPLE == 0
    assert padded["input_ids"].shape[1] >= longest
    monkeypatch.setattr(batching, "PAD_MULTIPLE", 1)
    exact = batching.collate(encoded, tokenizer.pad_token_id)
    assert exact["input_ids"].shape[1] == longest
    with torch.no_grad():
        assert _loss_sum(model, padded).item() == pytest.approx(_loss_sum(model, exact).item())


def test_precision_auto_resolves_to_what_the_machine_computes_natively(monkeypatch):
    from adaptool import modeling

    assert modeling.resolve_precision("fp32") == "fp32"
    monkeypatch.setattr(modeling, "device", lambda: "cpu")
    monkeypatch.setattr(modeling, "cpu_has_native_bf16", lambda: True)
    assert modeling.resolve_precision("auto") == "bf16"
    monkeypatch.setattr(modeling, "cpu_has_native_bf16", lambda: False)
    assert modeling.resolve_precision("auto") == "fp32"


class InterruptAt(Reporter):
    """Sends this process a real SIGINT (Ctrl-C) once step ``at`` is logged."""

    def __init__(self, at):
        self.at = at

    def log(self, record):
        if record["step"] == self.at and "loss" in record:
            os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.parametrize("backend", ["none", "bnb-4bit"])
def test_interrupted_then_resumed_equals_uninterrupted(tmp_path, tiny_bloom_dir, registry, backend):
    whole = (
        run(tmp_path / "a", tiny_bloom_dir, backend=backend, steps=10)
        if (tmp_path / "a").mkdir() is None
        else None
    )
    path = recipe_file(tmp_path / "a", tiny_bloom_dir, backend=backend, steps=10, name="b.toml")
    recipe = load_recipe(path, ["output.dir=" + str(tmp_path / "b")])
    first = train(recipe, reporter=InterruptAt(6))
    assert first.interrupted and first.step == 6
    assert (tmp_path / "b" / "checkpoints" / "step-0000006").is_dir()
    assert not (tmp_path / "b" / "adaptool.json").exists()
    resumed = train(recipe, resume=True)
    assert not resumed.interrupted and resumed.step == 10
    a = load_file(str(whole.output_dir / "adapter_model.safetensors"))
    b = load_file(str(resumed.output_dir / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    assert [r["loss"] for r in records(whole.output_dir)] == pytest.approx(
        [r["loss"] for r in records(resumed.output_dir)], abs=1e-6
    )


def test_ctrl_c_on_the_cli_leaves_a_resumable_checkpoint(tmp_path, tiny_bloom_dir):
    path = recipe_file(tmp_path, tiny_bloom_dir, steps=100000)
    cmd = [sys.executable, "-c", "from adaptool.cli import main; main()", "train", str(path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = tmp_path / "out" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (
        not metrics.exists() or len(metrics.read_text().splitlines()) < 3
    ):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, output
    assert "a checkpoint is saved" in output and "--resume" in output
    assert "Traceback" not in output
    from adaptool.training.checkpoint import latest_checkpoint

    checkpoint = latest_checkpoint(tmp_path / "out")
    step = int(checkpoint.name.split("-")[1])
    assert step >= 3
    logged = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert step == max(logged)  # the checkpoint is at the last finished step
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["step"] == step
    # resume with a reachable end
    from adaptool.plugins import load_plugins, use_plugins

    use_plugins(load_plugins(entry_points=False))
    recipe = load_recipe(path, [f"training.max_steps={step + 2}"])
    done = train(recipe, resume=True)
    assert done.step == step + 2 and (tmp_path / "out" / "adaptool.json").is_file()


def test_existing_output_dir_is_refused(tmp_path, tiny_bloom_dir, plugins):
    import re

    from typer.testing import CliRunner

    from adaptool.cli import build_app

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "precious.txt").write_text("keep me")
    path = recipe_file(tmp_path, tiny_bloom_dir, steps=2)
    recipe = load_recipe(path)
    # the library names its parameters, the command line its flags
    with pytest.raises(OutputExists, match=r"resume=True .* overwrite=True"):
        train(recipe)
    result = CliRunner().invoke(build_app(plugins), ["train", str(path)])
    assert result.exit_code == 2 and re.search(r"--resume .* --overwrite", result.output)
    assert (tmp_path / "out" / "precious.txt").read_text() == "keep me"
    with pytest.raises(AdaptoolError, match="no checkpoint to resume"):
        train(recipe, resume=True)
    # --overwrite replaces adaptool's own output only: a foreign folder is left alone
    with pytest.raises(AdaptoolError, match="does not look like something adaptool wrote"):
        train(recipe, overwrite=True)
    assert (tmp_path / "out" / "precious.txt").read_text() == "keep me"
    (tmp_path / "out" / "precious.txt").unlink()
    first = train(recipe)
    again = train(recipe, overwrite=True)
    assert first.output_dir == again.output_dir and again.step == 2
    # and never an input of the run
    with pytest.raises(AdaptoolError, match="would replace the input"):
        train(recipe, output_dir=tiny_bloom_dir.parent, overwrite=True)


def test_init_adapter_starts_from_an_existing_adapter(tmp_path, tiny_bloom_dir, registry):
    first = run(tmp_path, tiny_bloom_dir, steps=4)
    path = recipe_file(tmp_path, tiny_bloom_dir, steps=1, name="second.toml")
    overrides = ["output.dir=" + str(tmp_path / "second"), "training.learning_rate=1e-9"]
    recipe = load_recipe(path, overrides)
    second = train(recipe, init_adapter=first.output_dir)
    a = load_file(str(first.output_dir / "adapter_model.safetensors"))
    b = load_file(str(second.output_dir / "adapter_model.safetensors"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4  # started from it
    manifest = json.loads((second.output_dir / "adaptool.json").read_text())
    assert manifest["peft"]["init_adapter"] == str(first.output_dir)


def test_missing_column_empty_data_and_unknown_formatter(tmp_path, tiny_bloom_dir, registry):
    path = recipe_file(tmp_path, tiny_bloom_dir, source=DATA / "text.csv")
    with pytest.raises(DataError, match=r"no column 'quote', 'tags'.*'quote-tags'"):
        train(load_recipe(path))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    path = recipe_file(tmp_path, tiny_bloom_dir, source=empty, name="e.toml")
    with pytest.raises(DataError, match=r"empty\.jsonl has no rows"):
        train(load_recipe(path))
    with pytest.raises(RecipeError, match="unknown formatter 'tagger'"):
        load_recipe(path, ["data.formatter=tagger"])
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_overwrite_keeps_the_old_result_when_the_new_run_fails_early(
    tmp_path, tiny_bloom_dir, registry
):
    first = run(tmp_path, tiny_bloom_dir, steps=2)
    path = recipe_file(tmp_path, tiny_bloom_dir, source=DATA / "text.csv", name="bad.toml")
    with pytest.raises(DataError):
        train(load_recipe(path), overwrite=True)
    assert (first.output_dir / "adaptool.json").is_file()


def test_cli_train_errors_are_exit_2(tmp_path, tiny_bloom_dir, plugins):
    from typer.testing import CliRunner

    from adaptool.cli import build_app

    path = recipe_file(tmp_path, tiny_bloom_dir, source=DATA / "text.csv")
    result = CliRunner().invoke(build_app(plugins), ["train", str(path)])
    assert result.exit_code == 2 and "no column 'quote'" in result.output
    assert "Traceback" not in result.output


def test_constant_schedule_keeps_its_warmup(tmp_path, tiny_bloom_dir, registry):
    overrides = ['training.lr_scheduler="constant"', "training.warmup_steps=4"]
    result = run(tmp_path, tiny_bloom_dir, steps=6, overrides=overrides)
    lrs = [r["lr"] for r in records(result.output_dir) if "lr" in r]
    assert lrs[:4] == pytest.approx([3e-2 * k / 4 for k in (1, 2, 3, 4)])
    assert lrs[4:] == pytest.approx([3e-2, 3e-2])
