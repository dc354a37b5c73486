"""The model card (README.md) of an adapter or merged model: YAML metadata the Hub indexes
(base_model, library_name, tags, datasets, license) and a body with what was trained on what,
how it went (metrics, loss plot), the recipe, and how to use it with adaptool or plain peft."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

from adaptool.manifest import read_manifest

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
#: suffixes of local data files, which a Hub dataset id never has
DATA_SUFFIXES = {".json", ".jsonl", ".csv", ".parquet", ".txt", ".arrow", ".tsv"}


#: how a peft method is written in prose
NAMES = {"lora": "LoRA", "ia3": "IA³", "loha": "LoHa", "lokr": "LoKr", "adalora": "AdaLoRA"}


def is_hub_id(name: str | None) -> bool:
    """A Hub repo id (``org/name``) rather than a local path: not on disk, no file suffix."""
    if not name or not HUB_ID.match(name) or Path(name).expanduser().exists():
        return False
    return Path(name).suffix.lower() not in DATA_SUFFIXES


def read_recipe(folder: Path) -> dict[str, Any]:
    """The resolved recipe saved beside an adapter ({} when there is none or it is unreadable)."""
    path = folder / "recipe.toml"
    try:
        return tomllib.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, tomllib.TOMLDecodeError):
        return {}


def model_card(
    folder: Path, *, repo_id: str | None = None, manifest: dict[str, Any] | None = None
) -> str:
    """README.md text for ``folder`` (an adapter or a merged model), to be pushed as
    ``repo_id`` (the usage snippets name it: a Hub id, or where the folder will live; the
    folder path when None). ``manifest`` stands in for a manifest not written yet."""
    from huggingface_hub import ModelCard, ModelCardData

    manifest = manifest if manifest is not None else read_manifest(folder) or {}
    merged = manifest.get("kind") == "merged" or not (folder / "adapter_config.json").is_file()
    config = _json(folder / "adapter_config.json")
    recipe = read_recipe(folder)
    base = (manifest.get("base_model") or {}).get("name") or config.get("base_model_name_or_path")
    if merged:
        base = _merged_base(manifest) or base
    method = _method(manifest, config)
    quant = (manifest.get("quantization") or {}).get("backend", "none")
    source = (manifest.get("data") or {}).get("source") or (recipe.get("data") or {}).get("source")
    hub = recipe.get("hub") or {}
    tags = ["adaptool", "text-generation"]
    tags += ["merge"] if merged else ["peft", method.lower()]
    if quant.startswith("bnb-4bit"):
        tags.append("qlora")
    data = ModelCardData(
        base_model=base if is_hub_id(base) else None,
        library_name="transformers" if merged else "peft",
        pipeline_tag="text-generation",
        tags=tags,
        datasets=[source] if is_hub_id(source) else None,
        license=hub.get("license"),
    )
    name = repo_id or str(folder)
    parts = [
        f"# {name.split('/')[-1]}",
        _summary(merged, method, base, quant, source, manifest),
        _results(manifest),
        "![training loss](loss.png)" if (folder / "loss.png").is_file() else "",
        _usage(name, merged, base, quant, manifest),
        _recipe_block(folder),
        _provenance(manifest),
    ]
    content = f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(p for p in parts if p) + "\n"
    return str(ModelCard(content))


def _json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def _merged_base(manifest: dict[str, Any]) -> str | None:
    adapter = (manifest.get("adapter") or {}).get("manifest") or {}
    return (adapter.get("base_model") or {}).get("name")


def _method(manifest: dict[str, Any], config: dict[str, Any]) -> str:
    peft = manifest.get("peft") or {}
    return str(
        peft.get("method")
        or (manifest.get("adapter") or {}).get("peft_type")
        or config.get("peft_type")
        or "adapter"
    )


def _summary(
    merged: bool, method: str, base: str | None, quant: str, source: str | None, manifest: dict
) -> str:
    peft = manifest.get("peft") or {}
    what = f"A {NAMES.get(method.lower(), method.upper())} adapter"
    if peft.get("r"):
        what += f" (r={peft['r']}, alpha={peft.get('alpha')}, targets {peft.get('target_modules')})"
    what += f" for `{base}`" if base else ""
    if quant != "none":
        what += f", trained on the base quantized with {quant}"
    what += f", on `{Path(source).name if not is_hub_id(source) else source}`" if source else ""
    what += ", made with adaptool."
    if merged:
        merge = manifest.get("merge") or {}
        into = f" into the {merge['into']} base" if merge.get("into") else ""
        what = (
            f"`{base}` with a {method} adapter folded in{into}, saved in "
            f"{merge.get('dtype', 'its dtype')}: a standalone model that needs no peft. "
            "Made with adaptool."
        )
    return what


def _results(manifest: dict[str, Any]) -> str:
    results = manifest.get("results") or {}
    training = manifest.get("training") or {}
    rows = []
    if training.get("steps") is not None:
        rows.append(("steps", training["steps"]))
    for key, label in (
        ("train_loss", "final train loss"),
        ("eval_loss", "eval loss"),
        ("tokens", "tokens trained on"),
        ("wall_time_s", "wall time (s)"),
    ):
        if results.get(key) is not None:
            value = results[key]
            rows.append((label, f"{value:.4g}" if isinstance(value, float) else value))
    verification = manifest.get("verification") or {}
    if verification.get("reference"):
        ref = verification["reference"]
        rows.append(("merged vs adapter, max abs logit diff", f"{ref['max_abs_logit_diff']:.3g}"))
    if not rows:
        return ""
    table = "\n".join(f"| {label} | {value} |" for label, value in rows)
    return f"## Results\n\n| | |\n|---|---|\n{table}"


def _usage(name: str, merged: bool, base: str | None, quant: str, manifest: dict) -> str:
    if merged:
        return (
            "## Usage\n\n```bash\n"
            f'adaptool generate {name} "your prompt"\n```\n\n'
            "```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            f'model = AutoModelForCausalLM.from_pretrained("{name}")\n'
            f'tokenizer = AutoTokenizer.from_pretrained("{name}")\n```'
        )
    load = f'AutoModelForCausalLM.from_pretrained("{base}")'
    imports = "from transformers import AutoModelForCausalLM, AutoTokenizer"
    if quant.startswith("bnb-"):
        bits = "load_in_4bit=True" if "4bit" in quant else "load_in_8bit=True"
        imports = "from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig"
        load = (
            f'AutoModelForCausalLM.from_pretrained(\n    "{base}", '
            f"quantization_config=BitsAndBytesConfig({bits})\n)"
        )
    pull = f"adaptool pull {name}\n" if is_hub_id(name) else ""
    local = (
        f"The base, `{base}`, is a local folder where this was trained: elsewhere, pass its "
        f"location (`adaptool pull {name} --base PATH`, or the path in `from_pretrained`).\n\n"
        if base and not is_hub_id(base)
        else ""
    )
    return (
        f"## Usage\n\n{local}With adaptool (the base is loaded as it was trained):\n\n```bash\n"
        f'{pull}adaptool generate {name} "your prompt"\nadaptool merge {name} --output merged\n'
        "```\n\nWith plain peft:\n\n```python\n"
        f"{imports}\nfrom peft import PeftModel\n\n"
        f"base = {load}\n"
        f'model = PeftModel.from_pretrained(base, "{name}")\n'
        f'tokenizer = AutoTokenizer.from_pretrained("{name}")\n```'
    )


def _recipe_block(folder: Path) -> str:
    path = folder / "recipe.toml"
    if not path.is_file():
        return ""
    text = path.read_text(encoding="utf-8").strip()
    return f"## Recipe\n\n```toml\n{text}\n```"


def _provenance(manifest: dict[str, Any]) -> str:
    if not manifest:
        return ""
    libs = manifest.get("libraries") or {}
    versions = ", ".join(
        f"{k} {libs[k]}" for k in ("adaptool", "torch", "transformers", "peft") if k in libs
    )
    lines = [f"- created: {manifest.get('created', 'unknown')}"]
    if versions:
        lines.append(f"- with: {versions}")
    git = (manifest.get("recipe") or {}).get("git")
    if git:
        lines.append(f"- recipe at git commit {git['commit']}{' (dirty)' if git['dirty'] else ''}")
    lines.append("- full provenance: `adaptool.json`")
    return "## Provenance\n\n" + "\n".join(lines)
