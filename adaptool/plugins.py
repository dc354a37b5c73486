"""The plugin manager: built-ins first, then the ``adaptool`` entry-point group.

Every hook is called once per plugin, in load order (tryfirst/trylast do not change it) and
with pluggy's calling convention, with a ``register`` bound to that plugin, so each registration
is attributed to its distribution. A plugin that fails to import or raises in a hook is reported
and skipped, an implementation of a hook adaptool does not have is reported, and everything else
keeps working. Names (of every kind, and commands) follow one clash policy,
:class:`adaptool.registry.Claims`. ``ADAPTOOL_STRICT_PLUGINS=1`` turns those reports into errors;
``ADAPTOOL_DISABLE_PLUGINS=name,...`` blocks plugins by entry-point or distribution name.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import importlib.metadata as md
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pluggy

from adaptool import __version__, hookspecs
from adaptool.errors import PluginError, describe
from adaptool.registry import (
    KINDS,
    Claims,
    Loss,
    Provider,
    Registry,
    check_registration,
    normalize,
)

if TYPE_CHECKING:
    from pluggy import HookImpl

ENTRY_POINT_GROUP = "adaptool"
BUILTIN_PLUGINS = (
    "adaptool.builtin.formatters",
    "adaptool.builtin.quantizers",
    "adaptool.builtin.peft_methods",
    "adaptool.builtin.loggers",
    "adaptool.builtin.callbacks",
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

    def add_commands(self, app: Any, context: Any = None) -> None:
        """Call every plugin's ``register_commands(app)``; failures are isolated like the rest,
        and command names follow the clash policy of registrations (:class:`Claims`)."""
        lists = (app.registered_commands, app.registered_groups)  # commands, command groups
        bases = [list(items) for items in lists]
        claims = Claims("command")
        staged: list[tuple[int, Any, Provider]] = []
        for info, impl in self._in_load_order("register_commands"):
            try:
                _call(impl, app=app, context=context)
            except (Exception, SystemExit) as exc:  # a broken plugin must not break the CLI
                self._fail(info.provider, f"register_commands raised {describe(exc)}")
                continue
            finally:
                added = [(i, c) for i, items in enumerate(lists) for c in items[len(bases[i]) :]]
                for items, base in zip(lists, bases, strict=True):
                    items[:] = base
            for which, command in added:
                staged.append((which, command, info.provider))
                self._report(claims.claim(_command_name(command), info.provider))
        for which, items in enumerate(lists):
            items[:] = bases[which] + [
                command
                for i, command, provider in staged
                if i == which and claims.holds(_command_name(command), provider)
            ]
        self._record("commands", claims.held_by)

    def _register_kinds(self) -> None:
        """Call every plugin's ``register_<kind>`` hooks: what a plugin registers is checked as
        it goes and added once its hook returns, under the registry's clash policy."""
        for kind, (_, _, hook_name) in KINDS.items():
            for info, impl in self._in_load_order(hook_name):
                staged: list[type] = []
                try:
                    _call(impl, register=functools.partial(_stage, kind, staged))
                except (Exception, SystemExit) as exc:
                    self._fail(info.provider, f"{hook_name} raised {describe(exc)}")
                    continue
                for cls in staged:
                    self._report(self.registry.add(kind, cls, info.provider))
            self._record(kind, functools.partial(self.registry.provided_by, kind))

    def _check_hook_names(self) -> None:
        """Report every implementation of a hook adaptool does not have (a misspelled
        ``register_formater``) with a did-you-mean, unless it is marked ``optionalhook``."""
        try:
            self.manager.check_pending()
        except pluggy.PluginValidationError:  # it stops at the first one: report them all
            callers = {n: c for n, c in vars(self.manager.hook).items() if not n.startswith("_")}
            known = [name for name, caller in callers.items() if caller.has_spec()]
            for name in [name for name in callers if name not in known]:
                close = difflib.get_close_matches(name, known, n=1)
                hint = (
                    f"did you mean '{close[0]}'?"
                    if close
                    else f"adaptool's hooks are {', '.join(known)}"
                )
                for info, impl in self._in_load_order(name):
                    if not impl.optionalhook:
                        self._fail(info.provider, f"hook '{name}' is not an adaptool hook; {hint}")

    def _in_load_order(self, hook_name: str) -> list[tuple[PluginInfo, HookImpl]]:
        """The implementations of ``hook_name`` with their plugins, in load order (built-ins,
        entry points, ``extra``): tryfirst/trylast must not decide who claims a name first."""
        order = list(self.plugins)
        impls = getattr(self.manager.hook, hook_name).get_hookimpls()
        impls.sort(key=lambda impl: order.index(impl.plugin_name))
        return [(self.plugins[impl.plugin_name], impl) for impl in impls]

    def _record(self, kind: str, held_by: Callable[[Provider], list[str]]) -> None:
        """Note in each plugin's info the names of ``kind`` it holds now."""
        for info in self.plugins.values():
            names = held_by(info.provider)
            if names:
                info.registers[kind] = names
            else:
                info.registers.pop(kind, None)

    def _report(self, losses: list[Loss]) -> None:
        for provider, message in losses:
            self._fail(provider, message)

    def _fail(self, provider: Provider, message: str) -> None:
        """Report a plugin's problem; an error in strict mode, or when adaptool's own is broken."""
        problem = PluginProblem(provider.plugin, provider.distribution, message)
        if self.strict or provider.builtin:
            raise PluginError(f"{problem} ({STRICT_ENV} is set)" if self.strict else str(problem))
        if problem not in self.problems:  # the same app may be built twice
            self.problems.append(problem)


def _call(impl: HookImpl, **kwargs: Any) -> Any:
    """Call one implementation as pluggy's ``_multicall`` does: the arguments it names (none is
    fine), positionally, and those with defaults by keyword."""
    args = [kwargs[name] for name in impl.argnames]
    return impl.function(*args, **{k: kwargs[k] for k in impl.kwargnames if k in kwargs})


def _command_name(info: Any) -> str:
    """A Typer command's name, or a command group's (``app.add_typer(sub, name=...)``)."""
    if info.name:
        return info.name
    callback = getattr(info, "callback", None) or getattr(
        info.typer_instance, "registered_callback", None
    )
    callback = getattr(callback, "callback", callback)
    return callback.__name__.replace("_", "-") if callback else "?"


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


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
    blocked_names = {normalize(d) for d in disabled}

    manager = pluggy.PluginManager("adaptool")
    manager.add_hookspecs(hookspecs)
    plugins = PluginSet(manager, Registry(), {}, [], [], strict)
    version = __version__

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
            if {normalize(ep.name), normalize(dist)} & blocked_names:
                plugins.blocked.append(ep.name)
                plugins.registry.disabled |= {normalize(ep.name), normalize(dist)}
                continue
            if ep.name in plugins.plugins:
                plugins._fail(provider, f"another plugin is already called '{ep.name}'")
                continue
            try:
                module = ep.load()
            except (Exception, SystemExit) as exc:  # even one that calls sys.exit() at import
                plugins._fail(provider, f"failed to import ({describe(exc)})")
                continue
            add(module, provider)

    for i, plugin in enumerate(extra):
        name = getattr(plugin, "__name__", None) or f"extra-{i}"
        add(plugin, Provider(name, getattr(plugin, "__distribution__", name), "0"))

    plugins._check_hook_names()
    plugins._register_kinds()
    return plugins


def _stage(kind: str, staged: list[type], cls: Any) -> None:
    """The ``register`` callable a hook receives: check now, commit once the hook returns."""
    staged.append(check_registration(kind, cls))


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
