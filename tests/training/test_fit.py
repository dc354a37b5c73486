"""The training loop: the loss on completion tokens, its state in checkpoints."""

from __future__ import annotations

import pytest
import torch

from adaptool.recipe import load_recipe
from adaptool.training.run import train
from tests.helpers import recipe_file, records


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


def test_a_loss_that_stops_being_finite_stops_training_and_keeps_the_good_checkpoint(
    tmp_path, tiny_bloom_dir, plugins, monkeypatch
):
    """No NaN adapter called "done": the run stops with a clear error before the bad step is
    applied; the checkpoint before it stays, and no final output claims to be complete."""
    import pytest
    import torch

    import adaptool.training.fit as fit
    from adaptool.errors import TrainingError
    from adaptool.recipe import load_recipe
    from adaptool.training.checkpoint import latest_checkpoint
    from adaptool.training.run import train
    from tests.helpers import recipe_file

    real = fit.loss_sum
    calls = {"n": 0}

    def poisoned(model, batch, **kwargs):
        loss = real(model, batch, **kwargs)
        if not model.training:  # evaluation
            return loss
        calls["n"] += 1
        # step 6 goes to NaN (accumulation 2, its micro-batches merged: one forward a step)
        return loss * torch.tensor(float("nan")) if calls["n"] == 6 else loss

    monkeypatch.setattr(fit, "loss_sum", poisoned)
    recipe = load_recipe(recipe_file(tmp_path, tiny_bloom_dir, steps=10))
    with pytest.raises(TrainingError, match=r"the loss became nan at step 6: training diverged"):
        train(recipe)
    out = tmp_path / "out"
    assert latest_checkpoint(out).name == "step-0000004"
    assert not (out / "adaptool.json").exists()
    assert all(torch.isfinite(t).all() for t in _adapter_tensors(latest_checkpoint(out)))


def _adapter_tensors(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors")).values()


def test_packed_training_takes_the_steps_unpacked_training_takes(tmp_path, tiny_llama_dir, plugins):
    """On a Llama, packing = true packs every micro-batch into one sequence; with dropout off
    the run's losses and final adapter are those of the same run unpacked (fp32). "auto" is
    recorded as such (it packs the batches of mixed lengths); BLOOM is never packed."""
    import json

    from safetensors.torch import load_file

    runs = {}
    for packing in ("true", "false", "auto"):
        folder = tmp_path / packing
        folder.mkdir()
        path = recipe_file(folder, tiny_llama_dir, steps=4)
        done = train(load_recipe(path, ["peft.dropout=0.0", f"training.packing={packing}"]))
        manifest = json.loads((done.output_dir / "adaptool.json").read_text())
        runs[packing] = (done.output_dir, manifest)
    assert runs["true"][1]["training"]["packing_used"] is True
    assert runs["false"][1]["training"]["packing_used"] is False
    assert runs["auto"][1]["training"]["packing_used"] == "auto"
    losses = {k: [r["loss"] for r in records(out) if "loss" in r] for k, (out, _) in runs.items()}
    assert losses["true"] == pytest.approx(losses["false"], rel=1e-4)
    assert losses["auto"] == pytest.approx(losses["false"], rel=1e-4)
    assert losses["true"][-1] < losses["true"][0]
    a = load_file(runs["true"][0] / "adapter_model.safetensors")
    b = load_file(runs["false"][0] / "adapter_model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4


def test_packing_asked_for_where_it_is_not_exact_is_refused(tmp_path, tiny_bloom_dir, plugins):
    from adaptool.errors import ModelError

    path = recipe_file(tmp_path, tiny_bloom_dir, steps=1)
    with pytest.raises(ModelError, match=r"training.packing = true.*bloom takes no position ids"):
        train(load_recipe(path, ["training.packing=true"]))
    assert not (tmp_path / "out").exists()


def test_a_step_whose_modules_were_all_skipped_trains_on(tmp_path, tiny_bloom_dir, plugins):
    """LoHa with module_dropout = 0.95 often skips every adapted module of a micro-batch:
    its loss then has no trainable parameter, and the step goes on instead of crashing."""
    from tests.helpers import method_recipe

    lines = 'r = 4\nmodule_dropout = 0.95\ntarget_modules = "all-linear"'
    done = train(load_recipe(method_recipe(tmp_path, tiny_bloom_dir, "loha", lines, steps=4)))
    assert done.step == 4
