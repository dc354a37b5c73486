"""What plugins registered: checked on the way in, looked up by name with helpful errors."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Any

from adaptool.base import Formatter, PeftMethod, Plugin, Quantizer
from adaptool.errors import PluginError

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

    def formatter(self, name: str) -> type[Formatter]:
        return self.get("formatter", name)  # type: ignore[return-value]

    def quantizer(self, name: str) -> type[Quantizer]:
        return self.get("quantizer", name)  # type: ignore[return-value]

    def peft_method(self, name: str) -> type[PeftMethod]:
        return self.get("peft-method", name)  # type: ignore[return-value]


def unknown_name_message(kind: str, name: object, available: list[str]) -> str:
    plural = KINDS[kind][1]
    close = difflib.get_close_matches(str(name), available, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    listed = ", ".join(available) if available else "none"
    return (
        f"unknown {kind} '{name}'.{hint} Available {plural}: {listed}. A {kind} from another "
        f"package needs that package installed; `adaptool plugins` lists what is installed."
    )
