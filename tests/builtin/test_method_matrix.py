"""Every built-in PEFT method × {no quantization, bnb-4bit}, end to end on a tiny BLOOM with
random non-zero biases: trains a few steps with the loss moving, loads in plain peft with the
logits adaptool's loader gives, generates, and merges equal to adapter + base — or is refused
with a clear message where peft cannot fold or run it on that base."""

from __future__ import annotations

import math

import pytest
import torch

from adaptool.artifacts.loading import open_target
from adaptool.builtin.peft_methods import METHODS
from adaptool.builtin.quantizers import disable_cpu_bf16_repack
from adaptool.errors import AdapterError, RecipeError
from adaptool.generate import generate
from adaptool.inspection import inspect_folder
from adaptool.merging.merge import merge
from adaptool.recipe import load_recipe
from adaptool.training.run import train
from tests.helpers import logits_of, method_recipe

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

#: the [peft] lines of each method for a model of hidden size 64
PEFT = {
    "lora": 'r = 4\nalpha = 8\ntarget_modules = "all-linear"',
    # all-linear is where peft 0.21 saves an IA3 config it then refuses to load
    "ia3": 'target_modules = "all-linear"',
    "loha": 'r = 4\ntarget_modules = "all-linear"',
    "lokr": 'r = 4\ntarget_modules = "all-linear"',
    "oft": 'block_size = 8\ntarget_modules = "all-linear"',
    "boft": 'block_size = 4\ntarget_modules = "all-linear"',
    "vera": 'r = 16\ntarget_modules = "all-linear"',
    "fourierft": 'n_frequency = 200\ntarget_modules = "all-linear"',
    "hra": 'r = 4\ntarget_modules = "all-linear"',
    "ln-tuning": "",
    "adalora": 'init_r = 6\ntarget_r = 4\ntarget_modules = "all-linear"',
    "prompt-tuning": "num_virtual_tokens = 4",
    "prefix-tuning": "num_virtual_tokens = 4",
    "p-tuning": "num_virtual_tokens = 4\nencoder_hidden_size = 32",
}
BACKENDS = ("none", "bnb-4bit")
#: max |Δ| of the merged model's fp32 logits from adapter + base
MERGE_TOLERANCE = 1e-5


def test_every_builtin_method_is_in_the_matrix():
    assert sorted(PEFT) == sorted(cls.name for cls in METHODS)


def plain_peft(base, adapter, backend):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    kwargs = {"dtype": torch.float32}
    if backend == "bnb-4bit":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_compute_dtype=torch.float32,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
        )
    model = AutoModelForCausalLM.from_pretrained(str(base), **kwargs)
    # bitsandbytes' AVX512-BF16 path computes differently (and breaks training, see COMPAT):
    # adaptool turns it off, so the plain load here does the same
    disable_cpu_bf16_repack(model)
    return PeftModel.from_pretrained(model, str(adapter)).eval()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", sorted(PEFT))
def test_method(tmp_path, plugins, tiny_bloom_dir, method, backend):
    cls = next(c for c in METHODS if c.name == method)
    path = method_recipe(tmp_path, tiny_bloom_dir, method, PEFT[method], backend=backend)
    if backend in cls.unsupported_backends:
        with pytest.raises(RecipeError, match=f"cannot be trained on a {backend} base"):
            load_recipe(path)
        return

    result = train(load_recipe(path))
    losses = [r["loss"] for r in result.records if "loss" in r]
    assert len(losses) == 6 and all(math.isfinite(x) for x in losses)
    assert losses[-1] != losses[0], f"{method}: the loss did not move: {losses}"

    # plain peft loads it, and computes what adaptool's loader computes
    target = open_target(result.output_dir)
    ours = logits_of(target.model)
    theirs = logits_of(plain_peft(tiny_bloom_dir, result.output_dir, backend))
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)

    # the method describes itself in inspect and the model card
    info = inspect_folder(result.output_dir)
    assert info["method_name"] == cls.title()
    card = (result.output_dir / "README.md").read_text(encoding="utf-8")
    assert f"A {cls.title()} adapter" in card

    outputs = generate(
        target.model, target.tokenizer, ["Quote: be yourself\nTags:"], max_new_tokens=4
    )
    assert outputs[0].tokens > 0

    if not cls.mergeable:
        with pytest.raises(AdapterError, match="cannot be merged"):
            merge(result.output_dir, output=tmp_path / "merged")
        return
    merged = merge(result.output_dir, output=tmp_path / "merged", dtype="fp32")
    delta = merged.verification["reference"]["max_abs_logit_diff"]
    assert delta <= MERGE_TOLERANCE, f"{method} on {backend}: merged differs by {delta}"
    if backend == "none":  # the merged model alone, reloaded: adapter + base
        from transformers import AutoModelForCausalLM

        alone = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"))
        assert (logits_of(alone) - ours).abs().max().item() <= MERGE_TOLERANCE
