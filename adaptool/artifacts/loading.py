"""Loading what adaptool made (or plain peft made) to run it: an adapter on its base, loaded
the way the adapter was trained unless told otherwise, or a merged model; and the plugins its
manifest records, re-created as they were."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adaptool.artifacts.artifact import Artifact
from adaptool.artifacts.fit import check_fits
from adaptool.artifacts.layout import Kind
from adaptool.artifacts.manifest import Manifest
from adaptool.artifacts.method import recreate
from adaptool.errors import AdapterError, PluginError, describe, param
from adaptool.modeling import load_base, load_tokenizer, runtime_dtype
from adaptool.plugins import registry

if TYPE_CHECKING:
    from adaptool.base import Formatter, Quantizer


def recorded_formatter(manifest: Manifest | None, origin: str) -> Formatter | None:
    """The formatter ``manifest`` records, as it was (None without a manifest or formatter).
    Options the installed formatter no longer accepts are a PluginError."""
    if manifest is None or manifest.formatter is None:
        return None
    return recreate("formatter", manifest.formatter.name, manifest.formatter, origin)


def recorded_quantizer(manifest: Manifest | None, origin: str, override: str | None = None):
    """``override`` (``--quantization``) with its defaults, else the quantizer the manifest
    records, as it was (``none`` without a manifest)."""
    if override is not None:
        return registry().create("quantizer", override, {})
    spec = manifest.quantization if manifest is not None else None
    if spec is None:
        return registry().create("quantizer", "none", {})
    return recreate("quantizer", spec.name, spec, origin)


@dataclass
class Target:
    """An opened adapter or merged model, ready to generate."""

    artifact: Artifact
    model: Any
    tokenizer: Any
    formatter: Formatter | None
    base_name: str
    quantizer: Quantizer
    #: why the manifest's formatter could not be re-created (then prompts can only be raw)
    formatter_error: PluginError | None = None

    @property
    def path(self) -> Path:
        return self.artifact.path

    @property
    def kind(self) -> Kind:
        return self.artifact.kind

    @property
    def manifest(self) -> Manifest | None:
        return self.artifact.manifest


def open_target(
    folder: Path, *, base: str | None = None, quantization: str | None = None
) -> Target:
    """Load an adapter dir on its base (``base`` overriding where the base lives) or a merged
    model dir, in eval mode. ``folder`` is a local folder (a Hub id is located first, at the
    command line)."""
    artifact = Artifact.read(Path(folder))
    origin = str(artifact.path)
    try:
        formatter, formatter_error = recorded_formatter(artifact.manifest, origin), None
    except PluginError as exc:  # not installed here, or changed: raw prompts still work
        formatter, formatter_error = None, exc
    quantizer = recorded_quantizer(
        artifact.manifest if artifact.kind == Kind.ADAPTER else None, origin, quantization
    )
    if artifact.kind == Kind.ADAPTER:
        record = artifact.base_model(base)
        base_name = record.name
        check_fits(artifact, base=base_name)  # on the meta device, before memory is spent
        source = str(artifact.path) if artifact.has_tokenizer else base_name
        tokenizer = load_tokenizer(
            source, revision=None if artifact.has_tokenizer else record.revision
        )
        model = load_base(
            base_name,
            quantizer,
            revision=record.revision,
            dtype=record.dtype if record.dtype in ("float32", "bfloat16", "float16") else None,
        )
        model = attach(model, artifact.path, base_name)
    else:
        dtype = runtime_dtype(artifact.config.get("dtype") or artifact.config.get("torch_dtype"))
        tokenizer = load_tokenizer(str(artifact.path))
        model = load_base(str(artifact.path), quantizer, dtype=dtype)
        base_name = artifact.manifest.base_model.name if artifact.manifest else str(artifact.path)
    model.eval()
    model.config.use_cache = True
    return Target(artifact, model, tokenizer, formatter, base_name, quantizer, formatter_error)


def attach(
    model: Any, folder: Path, base_name: str, *, trainable: bool = False, hint: str | None = None
) -> Any:
    """``model`` with the adapter in ``folder`` attached by peft; an adapter that does not fit
    is an AdapterError naming both (``hint``: what to do about it)."""
    from peft import PeftModel

    try:
        return PeftModel.from_pretrained(model, str(folder), is_trainable=trainable)
    except Exception as exc:
        hint = hint or f"Pass {param('base')} with the model it was trained on."
        raise AdapterError(
            f"the adapter {folder} does not fit the base {base_name}: {describe(exc)}. {hint}"
        ) from None
