"""Verifying a merge: the merged model and the adapter unmerged are run on the same prompts —
a few the adapter was trained on, recorded in its manifest at training, else fixed sentences —
and their logits compared."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adaptool.artifacts.artifact import Artifact
from adaptool.artifacts.loading import open_target
from adaptool.errors import MergeVerificationError
from adaptool.merging.options import TOLERANCE, Dtype
from adaptool.modeling import quiet_libraries

FALLBACK_PROMPTS = (
    "The quick brown fox jumps over the lazy dog.",
    "“Knowledge is power.” ->: ['knowledge', 'power']",
    "Once upon a time, there was a small library by the sea.",
)


def verify_merge(
    adapter: Artifact,
    merged: Path,
    *,
    dtype: Dtype,
    base_dir: Path,
    quantizer: Any,
    load_dtype: Any,
    dequantize: bool,
    prompts: list[str] | None = None,
) -> dict[str, Any]:
    """Run the merged model and the adapter unmerged on a few prompts and compare logits
    (max |Δ| and mean KL per token).

    - ``reference``: the adapter on the very weights it was folded into (the base as trained
      when ``dequantize``, else the original weights), in fp32. A merge is correct when these
      agree to what the output ``dtype`` explains; above that it fails (MergeVerificationError).
    - ``as_trained``: the adapter on the base in ``base_dir`` loaded as in training
      (bitsandbytes layers and their compute). Reported always; for an unquantized adapter it
      is the same model as the reference. For ``original`` it measures how far the merged
      model is from what was trained.
    """
    trained = open_target(adapter.path, base=str(base_dir))
    tok = trained.tokenizer
    texts = prompts or recorded_prompts(adapter)
    special = not (trained.formatter is not None and trained.formatter.prompt_has_special_tokens)
    batches = [
        tok(t, add_special_tokens=special, return_tensors="pt")["input_ids"][:, :256] for t in texts
    ]
    merged_logits = _logits(_load_merged(merged), batches)
    as_trained = _logits(trained.model, batches)
    del trained
    reference = _logits(
        _reference_model(adapter.path, base_dir, quantizer, load_dtype, dequantize=dequantize),
        batches,
    )
    report = {
        "prompts": len(texts),
        "tolerance": TOLERANCE[dtype],
        "reference": compare(merged_logits, reference),
        "as_trained": compare(merged_logits, as_trained),
    }
    delta = report["reference"]["max_abs_logit_diff"]
    if delta > report["tolerance"]:
        raise MergeVerificationError(
            f"the merged model differs from the adapter it was made from by {delta:.3g} in the "
            f"logits (tolerance {report['tolerance']:g} for {dtype}): the merge is "
            f"wrong; nothing was written."
        )
    return report


def recorded_prompts(adapter: Artifact) -> list[str]:
    """The training samples the manifest records (prompt + completion, as trained), else
    fixed sentences. The training data is never reloaded."""
    samples = (adapter.manifest.samples if adapter.manifest else None) or []
    texts = [s["prompt"] + s["completion"] for s in samples if isinstance(s, dict)]
    return texts or list(FALLBACK_PROMPTS)


def compare(a: list[Any], b: list[Any]) -> dict[str, float]:
    """max |a - b| over every logit, and the mean KL(a || b) per token."""
    import torch

    delta, kl, tokens = 0.0, 0.0, 0
    for x, y in zip(a, b, strict=True):
        delta = max(delta, (x - y).abs().max().item())
        kl += torch.nn.functional.kl_div(
            x.log_softmax(-1), y.log_softmax(-1), log_target=True, reduction="sum"
        ).item()
        tokens += x.shape[1]
    return {"max_abs_logit_diff": delta, "mean_kl": kl / max(tokens, 1)}


def _logits(model: Any, batches: list[Any]) -> list[Any]:
    """fp32 logits on the CPU for each batch, run on the model's own device."""
    import torch

    device = next(model.parameters()).device
    with torch.no_grad():
        return [model(input_ids=ids.to(device)).logits.float().cpu() for ids in batches]


def _reference_model(
    adapter: Path, base_dir: Path, quantizer: Any, load_dtype: Any, *, dequantize: bool
) -> Any:
    """The adapter, unmerged, on the weights it is folded into, computed in fp32."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        str(base_dir), dtype=torch.float32, use_safetensors=True
    )
    if dequantize:
        layers = quantizer.quantized_layers(model)
        with torch.no_grad():
            for name, module in model.named_modules():
                if name in layers:
                    module.weight.copy_(quantizer.round_trip(module.weight, dtype=load_dtype))
    return PeftModel.from_pretrained(model, str(adapter)).eval()


def _load_merged(folder: Path) -> Any:
    from transformers import AutoModelForCausalLM

    quiet_libraries()
    return AutoModelForCausalLM.from_pretrained(
        str(folder), dtype="auto", use_safetensors=True
    ).eval()
