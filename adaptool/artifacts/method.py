"""Which PEFT method plugin an adapter was made with: the one its manifest records, else the
installed plugin that builds its peft type."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from adaptool.base import peft_type_name
from adaptool.errors import PluginError
from adaptool.plugins import registry

if TYPE_CHECKING:
    from adaptool.artifacts.artifact import Artifact
    from adaptool.base import PeftMethod

__all__ = ["describe_method", "format_hyperparameters", "recorded_method", "recreate"]


def recorded_method(artifact: Artifact) -> PeftMethod:
    """The PEFT method plugin of an adapter: the one its manifest records (with its options),
    else the installed plugin that builds its ``peft_type``. A method not installed here is a
    PluginError naming it."""
    origin = str(artifact.path)
    manifest = artifact.manifest
    spec = manifest.peft if manifest is not None else None
    if spec is not None and spec.method:
        return recreate("peft-method", spec.method, spec, origin)
    peft_type = peft_type_name(artifact.config.get("peft_type"))
    name = registry().method_for_peft_type(peft_type)
    if name is None:
        raise PluginError(
            f"{origin}: no installed PEFT method plugin handles peft type {peft_type or '?'} "
            f"(`adaptool plugins` lists what is installed)."
        )
    return registry().create("peft-method", name, {}, origin=origin)


def recreate(kind: str, name: str, spec: Any, origin: str) -> Any:
    """The plugin a manifest record (``spec``: options, version, package) describes, as it
    was made: its options checked by the installed plugin, its version and package compared
    with the recorded ones."""
    return registry().create(
        kind,
        name,
        spec.options,
        recorded_version=spec.version,
        origin=origin,
        distribution=(spec.distribution, spec.distribution_version),
    )


def describe_method(name: str | None, config: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(display name, the hyperparameters that matter) of the method ``name`` (else the one
    that builds ``config``'s peft type), described by its plugin from the peft ``config``
    (``adapter_config.json``). A method not installed here is shown by its name alone."""
    peft_type = peft_type_name(config.get("peft_type"))
    if not name or name not in registry().names("peft-method"):
        name = registry().method_for_peft_type(peft_type) or name or peft_type.lower() or "?"
    try:
        method = registry().create("peft-method", name, {})
    except PluginError:
        return name.upper(), {}
    return method.title(), {k: v for k, v in method.describe(config).items() if v is not None}


def format_hyperparameters(values: dict[str, Any]) -> str:
    """``r=8, alpha=16, targets=query_key_value, dense``."""

    def show(value: Any) -> str:
        if isinstance(value, (list, tuple, set)):
            return ", ".join(str(v) for v in value)
        return str(value)

    return "; ".join(f"{k}={show(v)}" for k, v in values.items())
