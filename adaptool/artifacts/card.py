"""The model card (README.md) of an adapter or merged model: YAML metadata the Hub indexes
(base_model, library_name, tags, datasets, license) and a body with what was trained on what,
how it went (metrics, loss plot), the recipe, and how to use it with adaptool or plain peft."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from adaptool.artifacts.artifact import Artifact
from adaptool.artifacts.layout import LOSS_PLOT, RECIPE, Kind
from adaptool.artifacts.manifest import Manifest
from adaptool.artifacts.method import describe_method, format_hyperparameters
from adaptool.hub.locate import is_hub_id


def read_recipe(folder: Path) -> dict[str, Any]:
    """The resolved recipe saved beside an adapter ({} when there is none or it is unreadable)."""
    path = folder / RECIPE
    try:
        return tomllib.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, tomllib.TOMLDecodeError):
        return {}


def model_card(
    folder: Path, *, repo_id: str | None = None, manifest: Manifest | None = None
) -> str:
    """README.md text for ``folder`` (an adapter or a merged model), to be pushed as
    ``repo_id`` (the usage snippets name it: a Hub id, or where the folder will live; the
    folder path when None). ``manifest`` stands in for a manifest not written yet."""
    from huggingface_hub import ModelCard, ModelCardData

    artifact = Artifact.read(folder)
    manifest = manifest if manifest is not None else artifact.manifest
    merged = artifact.kind == Kind.MERGED
    recipe = read_recipe(folder)
    if manifest is not None:
        base = (manifest.trained_base if merged else manifest.base_model).name
    else:
        base = artifact.config.get("base_model_name_or_path")
    method = (manifest.method if manifest else None) or artifact.method
    quant = manifest.backend if manifest else "none"
    source = ((manifest.data if manifest else None) or {}).get("source") or (
        recipe.get("data") or {}
    ).get("source")
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
        _summary(merged, method, artifact.config, base, quant, source, manifest),
        _results(manifest),
        f"![training loss]({LOSS_PLOT})" if (folder / LOSS_PLOT).is_file() else "",
        _usage(name, merged, base, quant),
        _recipe_block(folder),
        _provenance(manifest),
    ]
    content = f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(p for p in parts if p) + "\n"
    return str(ModelCard(content))


def _summary(
    merged: bool,
    method: str,
    config: dict[str, Any],
    base: str | None,
    quant: str,
    source: str | None,
    manifest: Manifest | None,
) -> str:
    title, hyper = describe_method(method, config)
    what = f"A {title} adapter"
    if hyper:
        what += f" ({format_hyperparameters(hyper)})"
    what += f" for `{base}`" if base else ""
    if quant != "none":
        what += f", trained on the base quantized with {quant}"
    what += f", on `{Path(source).name if not is_hub_id(source) else source}`" if source else ""
    what += ", made with adaptool."
    if merged:
        merge = (manifest.merge if manifest else None) or {}
        into = f" into the {merge['into']} base" if merge.get("into") else ""
        what = (
            f"`{base}` with a {title} adapter folded in{into}, saved in "
            f"{merge.get('dtype', 'its dtype')}: a standalone model that needs no peft. "
            "Made with adaptool."
        )
    return what


def _results(manifest: Manifest | None) -> str:
    if manifest is None:
        return ""
    results = manifest.results or {}
    training = manifest.training or {}
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
    verification = manifest.verification or {}
    if verification.get("reference"):
        ref = verification["reference"]
        rows.append(("merged vs adapter, max abs logit diff", f"{ref['max_abs_logit_diff']:.3g}"))
    if not rows:
        return ""
    table = "\n".join(f"| {label} | {value} |" for label, value in rows)
    return f"## Results\n\n| | |\n|---|---|\n{table}"


def _usage(name: str, merged: bool, base: str | None, quant: str) -> str:
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
    path = folder / RECIPE
    if not path.is_file():
        return ""
    text = path.read_text(encoding="utf-8").strip()
    return f"## Recipe\n\n```toml\n{text}\n```"


def _provenance(manifest: Manifest | None) -> str:
    if manifest is None:
        return ""
    libs = manifest.libraries or {}
    versions = ", ".join(
        f"{k} {libs[k]}" for k in ("adaptool", "torch", "transformers", "peft") if k in libs
    )
    lines = [f"- created: {manifest.created}"]
    if versions:
        lines.append(f"- with: {versions}")
    git = (manifest.recipe or {}).get("git")
    if git:
        lines.append(f"- recipe at git commit {git['commit']}{' (dirty)' if git['dirty'] else ''}")
    lines.append("- full provenance: `adaptool.json`")
    return "## Provenance\n\n" + "\n".join(lines)
