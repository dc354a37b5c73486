"""What plugins registered: checked on the way in, looked up by name with helpful errors."""

from __future__ import annotations

import difflib
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from adaptool.base import Formatter, PeftMethod, Plugin, Quantizer
from adaptool.errors import AdaptoolWarning, PluginError

NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]*\Z")

#: kind -> (base class, plural used in messages, the hook that registers it)
KINDS: dict[str, tuple[type[Plugin], str, str]] = {
    "formatter": (Formatter, "formatters", "register_formatters"),
    "quantizer": (Quantizer, "quantizers", "register_quantizers"),
    "peft-method": (PeftMethod, "PEFT methods", "register_peft_methods"),
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
    return cls


class Registry:
    """Registered plugin classes by kind and name, with who provided each."""

    def __init__(self) -> None:
        self._entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
        self.clashes: dict[tuple[str, str], Clash] = {}

    def add(self, kind: str, cls: type[Plugin], provider: Provider) -> Clash | None:
        """Add a checked class; a second claim on a name is recorded as a clash (the name then
        cannot be used until one of the plugins goes) and returned."""
        cls = check_registration(kind, cls)
        entries = self._entries[kind]
        if cls.name in entries:
            clash = self.clashes.setdefault(
                (kind, cls.name), Clash(kind, cls.name, [entries[cls.name].provider])
            )
            clash.providers.append(provider)
            return clash
        entries[cls.name] = Entry(cls, provider)
        return None

    def names(self, kind: str) -> list[str]:
        return sorted(self._entries[kind])

    def entries(self, kind: str) -> dict[str, Entry]:
        return dict(self._entries[kind])

    def entry(self, kind: str, name: str) -> Entry:
        """The entry for ``name``, or a PluginError listing what is available."""
        if (kind, name) in self.clashes:
            raise PluginError(self.clashes[kind, name].message())
        try:
            return self._entries[kind][name]
        except KeyError:
            raise PluginError(unknown_name_message(kind, name, self.names(kind))) from None

    def get(self, kind: str, name: str) -> type[Plugin]:
        return self.entry(kind, name).cls

    def create(
        self,
        kind: str,
        name: str,
        options: Mapping[str, Any],
        *,
        recorded_version: str | None = None,
        origin: str | None = None,
    ) -> Any:
        """The one place a plugin is instantiated: ``name``'s class of ``kind`` with
        ``options`` validated by its own schema.

        ``recorded_version`` and ``origin`` are for reopening what was made earlier (an
        adapter's manifest): options the installed plugin no longer accepts are a PluginError
        naming both versions; a different version that accepts them is a warning."""
        entry = self.entry(kind, name)
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


def unknown_name_message(kind: str, name: object, available: list[str]) -> str:
    plural = KINDS[kind][1]
    close = difflib.get_close_matches(str(name), available, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    listed = ", ".join(available) if available else "none"
    return (
        f"unknown {kind} '{name}'.{hint} Available {plural}: {listed}. A {kind} from another "
        f"package needs that package installed; `adaptool plugins` lists what is installed."
    )
