"""train() end to end: the loss falls, interrupted and resumed runs, the output dir's refusals."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from adaptool import AdaptoolError, DataError
from adaptool.errors import OutputExists
from adaptool.recipe import load_recipe
from adaptool.training.run import train
from tests.helpers import (
    DATA,
    InterruptAt,
    recipe_file,
    records,
    run,
)


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
    # gradient_checkpointing "auto": on for a quantized base (memory is what it is for), off
    # for this tiny full-precision one (its activations fit many times over)
    assert result.manifest.training["gradient_checkpointing_used"] is (backend != "none")
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


def test_overwrite_keeps_the_old_result_when_the_new_run_fails_early(
    tmp_path, tiny_bloom_dir, registry
):
    first = run(tmp_path, tiny_bloom_dir, steps=2)
    path = recipe_file(tmp_path, tiny_bloom_dir, source=DATA / "text.csv", name="bad.toml")
    with pytest.raises(DataError):
        train(load_recipe(path), overwrite=True)
    assert (first.output_dir / "adaptool.json").is_file()


def test_resume_with_a_changed_recipe_is_refused_before_anything_is_touched(
    tmp_path, tiny_bloom_dir, plugins
):
    """A changed rank, target modules or quantization cannot continue the run: refused with
    the differences named, and the finished run's manifest is still there."""
    path = recipe_file(tmp_path, tiny_bloom_dir, steps=10)  # checkpoints at steps 4 and 8
    done = train(load_recipe(path))
    manifest = (done.output_dir / "adaptool.json").read_bytes()
    changes = {
        "peft.r=4": "peft.r was 8, the recipe now says 4",
        'peft.target_modules=["query_key_value"]': "peft.target_modules",
        'quantization.backend="bnb-8bit"': "quantization.backend was 'none'",
    }
    for change, said in changes.items():
        with pytest.raises(AdaptoolError, match="no longer matches") as err:
            train(load_recipe(path, [change]), resume=True)
        assert said in str(err.value)
        assert (done.output_dir / "adaptool.json").read_bytes() == manifest
    resumed = train(load_recipe(path), resume=True)  # the same recipe resumes
    assert resumed.step == 10


def test_a_torn_checkpoint_and_a_cut_log_line_still_resume(tmp_path, tiny_bloom_dir, plugins):
    """A crash before the newest checkpoint's state reached disk, and a full disk that cut the
    last metrics line: the run resumes from the checkpoint before, with warnings."""
    from adaptool.errors import AdaptoolWarning
    from adaptool.training.checkpoint import latest_checkpoint

    path = recipe_file(tmp_path, tiny_bloom_dir, steps=10)
    out = train(load_recipe(path)).output_dir
    newest = latest_checkpoint(out)
    assert newest.name == "step-0000008"
    (newest / "trainer_state.json").write_text("")  # torn
    (out / "checkpoints" / "latest").unlink()
    with (out / "metrics.jsonl").open("a") as fh:
        fh.write('{"step": 11, "lo')
    with pytest.warns(AdaptoolWarning) as caught:
        resumed = train(load_recipe(path), resume=True)
    messages = " ".join(str(w.message) for w in caught)
    assert "is torn" in messages and "cut short" in messages
    assert resumed.step == 10
    steps = [r["step"] for r in records(out)]
    assert steps == sorted(steps) and steps[-1] == 10


def test_resume_on_changed_data_is_refused(tmp_path, tiny_bloom_dir, plugins):
    """An edited source would make other batches: the resumed run is refused, naming why,
    before anything is touched; with the data as it was, it resumes."""
    import json

    source = tmp_path / "quotes.jsonl"
    source.write_text((DATA / "quotes.jsonl").read_text())
    path = recipe_file(tmp_path, tiny_bloom_dir, steps=8, source=source)
    recipe = load_recipe(path)
    first = train(recipe, reporter=InterruptAt(5))
    assert first.interrupted
    original = source.read_text()
    source.write_text(original + json.dumps({"quote": "“New.”", "tags": ["new"]}) + "\n")
    with pytest.raises(AdaptoolError, match="training data is not what the run of"):
        train(load_recipe(path), resume=True)
    source.write_text(original)
    assert train(load_recipe(path), resume=True).step == 8


def test_a_checkpoint_of_an_earlier_batch_plan_is_refused_on_resume(
    tmp_path, tiny_bloom_dir, plugins
):
    """A checkpoint written before a step's rows were planned together (it records no token
    budget) would resume onto other batches: refused, naming the way out."""
    import json

    from adaptool.artifacts.layout import CHECKPOINT_STATE
    from adaptool.training.checkpoint import latest_checkpoint

    path = recipe_file(tmp_path, tiny_bloom_dir, steps=8)
    assert train(load_recipe(path), reporter=InterruptAt(5)).interrupted
    state_file = latest_checkpoint(tmp_path / "out") / CHECKPOINT_STATE
    state = json.loads(state_file.read_text())
    assert state["micro_batch_tokens"] > 0 and state["compiled"] is False
    del state["micro_batch_tokens"]
    state_file.write_text(json.dumps(state))
    with pytest.raises(AdaptoolError, match="written by an earlier adaptool"):
        train(load_recipe(path), resume=True)
