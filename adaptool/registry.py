"""What plugins registered: checked on the way in, looked up by name with helpful errors."""

from __future__ import annotations

import difflib
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from adaptool.base import (
    Callback,
    Formatter,
    Logger,
    Options,
    PeftMethod,
    Plugin,
    Quantizer,
    peft_type_name,
)
from adaptool.errors import AdaptoolWarning, PluginError

NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]*\Z")

#: kind -> (base class, plural used in messages, the hook that registers it)
KINDS: dict[str, tuple[type[Plugin], str, str]] = {
    "formatter": (Formatter, "formatters", "register_formatters"),
    "quantizer": (Quantizer, "quantizers", "register_quantizers"),
    "peft-method": (PeftMethod, "PEFT methods", "register_peft_methods"),
    "logger": (Logger, "loggers", "register_loggers"),
    "callback": (Callback, "callbacks", "register_callbacks"),
}


@dataclass(frozen=True)
class Provider:
    """Who provided a registration: the plugin (entry-point or module name) and its package."""

    plugin: str
    distribution: str
    version: str
    builtin: bool = False

    def __str__(self) -> str:
        return f"{self.distribution} {self.version} (plugin '{self.plugin}')"


@dataclass(frozen=True)
class Entry:
    cls: type[Plugin]
    provider: Provider


@dataclass
class Clash:
    kind: str
    name: str
    providers: list[Provider] = field(default_factory=list)

    def message(self) -> str:
        who = " and ".join(str(p) for p in self.providers)
        return (
            f"the {self.kind} name '{self.name}' is registered by more than one plugin: {who}. "
            f"Uninstall or disable one of them (ADAPTOOL_DISABLE_PLUGINS=<plugin>)."
        )


#: A provider whose claim on a name did not stand, and why (what the plugin manager reports).
Loss = tuple[Provider, str]


class Claims:
    """Who holds each name of one kind (a registered kind, or ``"command"``): adaptool's one
    clash policy, so a third party can never take a name away from adaptool itself.

    - the first claim on a name holds it;
    - a name a built-in holds stays the built-in's: a later claim is refused (so is a plugin
      claiming one of its own names again);
    - two third-party claims make the name unusable for both (and for any later claimant),
      with a :class:`Clash` naming every package.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.owners: dict[str, Provider] = {}
        self.clashes: dict[str, Clash] = {}

    def claim(self, name: str, provider: Provider) -> list[Loss]:
        """Record ``provider``'s claim on ``name``; returns who lost a claim because of it
        (nobody when it holds the name now)."""
        if name not in self.owners:
            self.owners[name] = provider
            return []
        owner = self.owners[name]
        if owner.builtin or owner == provider:
            return [
                (
                    provider,
                    f"the {self.kind} '{name}' is already provided by {owner}; "
                    f"this plugin's '{name}' is not added",
                )
            ]
        clash = self.clashes.setdefault(name, Clash(self.kind, name, [owner]))
        clash.providers.append(provider)
        losers = [owner, provider] if len(clash.providers) == 2 else [provider]
        return [(loser, clash.message()) for loser in losers]

    def holds(self, name: str, provider: Provider) -> bool:
        """Whether ``provider`` holds ``name`` (it claimed it first and nobody clashed)."""
        return self.owners.get(name) == provider and name not in self.clashes

    def held_by(self, provider: Provider) -> list[str]:
        """The names ``provider`` holds, in the order it claimed them."""
        return [name for name in self.owners if self.holds(name, provider)]


def check_registration(kind: str, cls: Any) -> type[Plugin]:
    """Refuse anything that is not a proper subclass of the kind's base class with a valid name."""
    base, _, hook = KINDS[kind]
    if not (isinstance(cls, type) and issubclass(cls, base)) or cls is base:
        raise PluginError(
            f"{hook} was given {cls!r}, which is not a subclass of adaptool.{base.__name__}."
        )
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise PluginError(
            f"{hook} was given {cls.__name__} with name {name!r}; a {kind} name must be "
            f"lowercase letters, digits and dashes, starting with a letter or digit."
        )
    if kind == "peft-method" and not _takes(cls.peft_config, 2):
        raise PluginError(
            f"{hook} was given {cls.__name__}, whose peft_config takes (settings) only: adaptool "
            f"now calls peft_config(settings, run) (run: adaptool.RunInfo, the run's step count "
            f"and more); add the run parameter (docs/plugins.md)."
        )
    options = getattr(cls, "Options", None)
    if not (isinstance(options, type) and issubclass(options, Options)):
        raise PluginError(
            f"{hook} was given {cls.__name__}, whose Options is {options!r}: it must be a "
            f"subclass of adaptool.Options (the schema of the recipe keys it accepts)."
        )
    return cls


def _takes(function: Any, count: int) -> bool:
    """Whether ``function`` (a method, self aside) accepts ``count`` positional arguments."""
    import inspect

    try:
        parameters = list(inspect.signature(function).parameters.values())[1:]
    except (TypeError, ValueError):
        return True
    if any(p.kind is p.VAR_POSITIONAL for p in parameters):
        return True
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= count


class Registry:
    """Registered plugin classes by kind and name, with who provided each."""

    def __init__(self) -> None:
        self._entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
        self._claims = {kind: Claims(kind) for kind in KINDS}
        #: installed plugins that were not loaded (ADAPTOOL_DISABLE_PLUGINS): their entry-point
        #: and distribution names, normalized
        self.disabled: set[str] = set()

    def add(self, kind: str, cls: type[Plugin], provider: Provider) -> list[Loss]:
        """Add a checked class under the clash policy of :class:`Claims`; returns who lost a
        claim because of it (a clashed name then cannot be used until one of the plugins goes).
        """
        cls = check_registration(kind, cls)
        losses = self._claims[kind].claim(cls.name, provider)
        if not losses:
            self._entries[kind][cls.name] = Entry(cls, provider)
        return losses

    def provided_by(self, kind: str, provider: Provider) -> list[str]:
        """The names of ``kind`` that ``provider`` holds, in registration order."""
        return self._claims[kind].held_by(provider)

    def names(self, kind: str) -> list[str]:
        return sorted(self._entries[kind])

    def entries(self, kind: str) -> dict[str, Entry]:
        return dict(self._entries[kind])

    def entry(self, kind: str, name: str) -> Entry:
        """The entry for ``name``, or a PluginError listing what is available."""
        clash = self._claims[kind].clashes.get(name)
        if clash is not None:
            raise PluginError(clash.message())
        try:
            return self._entries[kind][name]
        except KeyError:
            raise PluginError(unknown_name_message(kind, name, self.names(kind))) from None

    def get(self, kind: str, name: str) -> type[Plugin]:
        return self.entry(kind, name).cls

    def method_for_peft_type(self, peft_type: str) -> str | None:
        """The name of the PEFT method plugin that builds peft's ``peft_type`` ("LORA"): how
        an adapter made without adaptool finds its method (built-ins first)."""
        wanted = peft_type_name(peft_type)
        if not wanted:  # a config naming no type is no method's
            return None
        entries = sorted(
            self._entries["peft-method"].values(), key=lambda e: not e.provider.builtin
        )
        for entry in entries:
            if peft_type_name(entry.cls.peft_type) == wanted:  # a PeftMethod ClassVar
                return entry.cls.name
        return None

    def create(
        self,
        kind: str,
        name: str,
        options: Mapping[str, Any],
        *,
        recorded_version: str | None = None,
        origin: str | None = None,
        distribution: tuple[str | None, str | None] | None = None,
    ) -> Any:
        """The one place a plugin is instantiated: ``name``'s class of ``kind`` with
        ``options`` validated by its own schema.

        ``recorded_version`` and ``origin`` are for reopening what was made earlier (an
        adapter's manifest): options the installed plugin no longer accepts are a PluginError
        naming both versions; a different version that accepts them is a warning; a plugin that
        is not installed names the ``distribution`` (name, version) the manifest says provided
        it, or says that it is installed but disabled."""
        try:
            entry = self.entry(kind, name)
        except PluginError as exc:
            if distribution is None or not distribution[0] or name in self._claims[kind].clashes:
                raise
            raise PluginError(self._missing(kind, name, origin, *distribution)) from exc
        cls = entry.cls
        where = f"{origin}: " if origin else ""
        versions = ""
        if recorded_version is not None and str(recorded_version) != str(cls.version):
            versions = (
                f" It was made with version {recorded_version} of '{name}'; version "
                f"{cls.version} is installed here (from {entry.provider})."
            )
        try:
            validated = cls.Options.model_validate(dict(options))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or '(options)'}: {err['msg']}"
                for err in exc.errors()
            )
            raise PluginError(
                f"{where}the {kind} '{name}' does not accept the options it was given "
                f"({problems}).{versions}"
                + (
                    f" Install the version of {entry.provider.distribution} it was made with."
                    if recorded_version is not None
                    else ""
                )
            ) from None
        if versions:
            warnings.warn(
                f"{where}{versions.strip()} Its behaviour may differ.",
                AdaptoolWarning,
                stacklevel=2,
            )
        return cls(validated)

    def _missing(
        self, kind: str, name: str, origin: str | None, dist: str, dist_version: str | None
    ) -> str:
        where = f"{origin}: " if origin else ""
        made = f"{where}it was made with the {kind} '{name}' from {dist} {dist_version or ''}"
        if normalize(dist) in self.disabled:
            return (
                f"{made.rstrip()}, which is installed here but disabled "
                f"(ADAPTOOL_DISABLE_PLUGINS); enable it to use this."
            )
        pin = f"=={dist_version}" if dist_version else ""
        return (
            f"{made.rstrip()}, which is not installed here: install it with "
            f"`adaptool plugins install {dist}{pin}`."
        )


def normalize(name: str) -> str:
    """A plugin or distribution name as ADAPTOOL_DISABLE_PLUGINS compares it."""
    return name.strip().lower().replace("_", "-").replace(".", "-")


def unknown_name_message(kind: str, name: object, available: list[str]) -> str:
    plural = KINDS[kind][1]
    close = difflib.get_close_matches(str(name), available, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    listed = ", ".join(available) if available else "none"
    return (
        f"unknown {kind} '{name}'.{hint} Available {plural}: {listed}. A {kind} from another "
        f"package needs that package installed; `adaptool plugins` lists what is installed."
    )
