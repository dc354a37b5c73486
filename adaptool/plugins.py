"""The plugin manager: built-ins first, then the ``adaptool`` entry-point group.

Every hook is called once per plugin with a ``register`` bound to that plugin, so each
registration is attributed to its distribution, and a plugin that fails to import or raises in a
hook is reported and skipped while everything else keeps working. ``ADAPTOOL_STRICT_PLUGINS=1``
turns those reports into errors; ``ADAPTOOL_DISABLE_PLUGINS=name,...`` blocks plugins by
entry-point or distribution name.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata as md
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import pluggy

from adaptool import hookspecs
from adaptool.errors import PluginError, describe
from adaptool.registry import KINDS, Provider, Registry, check_registration

ENTRY_POINT_GROUP = "adaptool"
BUILTIN_PLUGINS = (
    "adaptool.builtin.formatters",
    "adaptool.builtin.quantizers",
    "adaptool.builtin.peft_methods",
    "adaptool.builtin.commands",
)
STRICT_ENV = "ADAPTOOL_STRICT_PLUGINS"
DISABLE_ENV = "ADAPTOOL_DISABLE_PLUGINS"


@dataclass
class PluginInfo:
    """One loaded plugin and what it registered."""

    provider: Provider
    registers: dict[str, list[str]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.provider.plugin

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.provider.plugin,
            "distribution": self.provider.distribution,
            "version": self.provider.version,
            "builtin": self.provider.builtin,
            "registers": {k: v for k, v in self.registers.items() if v},
        }


@dataclass
class PluginProblem:
    """A plugin that was skipped (failed, or lost a name clash) and why."""

    plugin: str
    distribution: str
    message: str

    def __str__(self) -> str:
        return f"plugin '{self.plugin}' from {self.distribution}: {self.message}"


@dataclass
class PluginSet:
    """The loaded plugins: the registry, who provided what, what failed and what was blocked."""

    manager: pluggy.PluginManager
    registry: Registry
    plugins: dict[str, PluginInfo]
    problems: list[PluginProblem]
    blocked: list[str]
    strict: bool

    def add_commands(self, app: Any) -> None:
        """Call every plugin's ``register_commands(app)``; failures are isolated like the rest."""
        owners: dict[str, Provider] = {}
        for impl in self.manager.hook.register_commands.get_hookimpls():
            info = self.plugins[impl.plugin_name]
            before = list(app.registered_commands)
            try:
                impl.function(app=app)
            except Exception as exc:  # a broken plugin must not break the CLI
                app.registered_commands[:] = before
                self._fail(info.provider, f"register_commands raised {describe(exc)}")
                continue
            added = app.registered_commands[len(before) :]
            taken = [c for c in added if _command_name(c) in owners]
            if taken:  # a command name is a clash like any other: the first owner keeps it
                app.registered_commands[:] = before + [c for c in added if c not in taken]
                for command in taken:
                    name = _command_name(command)
                    self._fail(
                        info.provider,
                        f"the command '{name}' is already provided by "
                        f"{owners[name]}; this plugin's '{name}' is not added",
                    )
            names = [_command_name(c) for c in added if c not in taken]
            owners.update(dict.fromkeys(names, info.provider))
            info.registers["commands"] = names

    def _fail(self, provider: Provider, message: str) -> None:
        problem = PluginProblem(provider.plugin, provider.distribution, message)
        if self.strict or provider.builtin:
            raise PluginError(f"{problem} ({STRICT_ENV} is set)" if self.strict else str(problem))
        self.problems.append(problem)


def _command_name(info: Any) -> str:
    return info.name or info.callback.__name__.replace("_", "-")


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def _normalize(name: str) -> str:
    return name.strip().lower().replace("_", "-").replace(".", "-")


def load_plugins(
    *,
    strict: bool | None = None,
    disabled: Iterable[str] | None = None,
    entry_points: bool = True,
    extra: Iterable[ModuleType | object] = (),
) -> PluginSet:
    """Build a fresh plugin set: built-ins, then installed entry points, then ``extra`` plugin
    objects (handy in tests). ``strict``/``disabled`` default to the environment variables."""
    if strict is None:
        strict = _truthy(os.environ.get(STRICT_ENV))
    if disabled is None:
        disabled = [d for d in os.environ.get(DISABLE_ENV, "").split(",") if d.strip()]
    blocked_names = {_normalize(d) for d in disabled}

    manager = pluggy.PluginManager("adaptool")
    manager.add_hookspecs(hookspecs)
    plugins = PluginSet(manager, Registry(), {}, [], [], strict)
    version = _adaptool_version()

    def add(plugin: object, provider: Provider) -> None:
        try:
            manager.register(plugin, name=provider.plugin)
        except Exception as exc:  # pluggy refuses hookimpls that do not match a hookspec
            plugins._fail(provider, f"could not be registered: {describe(exc)}")
            return
        plugins.plugins[provider.plugin] = PluginInfo(provider)

    for module_name in BUILTIN_PLUGINS:
        add(importlib.import_module(module_name), Provider(module_name, "adaptool", version, True))

    if entry_points:
        for ep in md.entry_points(group=ENTRY_POINT_GROUP):
            dist = ep.dist.name if ep.dist is not None else ep.value.split(":")[0]
            dist_version = ep.dist.version if ep.dist is not None else "?"
            provider = Provider(ep.name, dist, dist_version)
            if {_normalize(ep.name), _normalize(dist)} & blocked_names:
                plugins.blocked.append(ep.name)
                continue
            if ep.name in plugins.plugins:
                plugins._fail(provider, f"another plugin is already called '{ep.name}'")
                continue
            try:
                module = ep.load()
            except Exception as exc:
                plugins._fail(provider, f"failed to import ({describe(exc)})")
                continue
            add(module, provider)

    for i, plugin in enumerate(extra):
        name = getattr(plugin, "__name__", None) or f"extra-{i}"
        add(plugin, Provider(name, getattr(plugin, "__distribution__", name), "0"))

    for kind, (_, _, hook_name) in KINDS.items():
        for impl in getattr(manager.hook, hook_name).get_hookimpls():
            info = plugins.plugins[impl.plugin_name]
            staged: list[type] = []
            try:
                impl.function(register=functools.partial(_stage, kind, staged))
            except Exception as exc:
                plugins._fail(info.provider, f"{hook_name} raised {describe(exc)}")
                continue
            for cls in staged:
                clash = plugins.registry.add(kind, cls, info.provider)
                if clash is not None:
                    plugins._fail(info.provider, clash.message())
                else:
                    info.registers.setdefault(kind, []).append(cls.name)
    return plugins


def _stage(kind: str, staged: list[type], cls: Any) -> None:
    """The ``register`` callable a hook receives: check now, commit once the hook returns."""
    staged.append(check_registration(kind, cls))


def _adaptool_version() -> str:
    from adaptool import __version__

    return __version__


_default: PluginSet | None = None


def get_plugins() -> PluginSet:
    """The process-wide plugin set, loaded on first use."""
    global _default
    if _default is None:
        _default = load_plugins()
    return _default


def registry() -> Registry:
    """The process-wide registry: what library code looks plugins up in (one global set, as
    simonw/llm does; tests and embedders swap it with :func:`use_plugins`)."""
    return get_plugins().registry


def use_plugins(plugins: PluginSet) -> None:
    """Make ``plugins`` the process-wide plugin set (the CLI built over it uses it)."""
    global _default
    _default = plugins


def reset_plugins() -> None:
    """Forget the process-wide plugin set (the next get_plugins() loads again)."""
    global _default
    _default = None
