"""TOML recipe -> validated :class:`~adaptool.recipe.schema.Recipe`, with every problem
reported at once. Relative paths resolve against the recipe file's folder; ``--set`` values
against the current directory. The chosen plugins' options are checked by their own schemas,
and each resolved plugin then looks at the whole recipe (``recipe_problems``)."""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from adaptool.errors import PluginError, RecipeError, RecipeProblem, describe
from adaptool.hub.locate import is_hub_id
from adaptool.plugins import registry
from adaptool.recipe.resolve import resolve_plugins
from adaptool.recipe.schema import (
    REQUIRED_SECTIONS,
    SECTIONS,
    SHARED_KEYS,
    DataSection,
    Recipe,
    Section,
)


def load_recipe(
    path: str | Path,
    overrides: Iterable[str] = (),
    *,
    cwd: Path | None = None,
) -> Recipe:
    """Read, override (``section.key=value``), resolve paths and validate a recipe file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError(str(path), [RecipeProblem("", "recipe file not found")]) from None
    except UnicodeDecodeError as exc:
        problem = f"not UTF-8 text (byte {exc.start} is {exc.object[exc.start]:#04x})"
        raise RecipeError(str(path), [RecipeProblem("", problem)]) from None
    except OSError as exc:
        raise RecipeError(str(path), [RecipeProblem("", f"cannot read the file: {exc}")]) from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(str(path), [RecipeProblem("", f"not valid TOML: {exc}")]) from None
    except RecursionError:
        problem = "not a recipe: its tables or arrays are nested too deeply to read"
        raise RecipeError(str(path), [RecipeProblem("", problem)]) from None
    return validate_recipe(raw, path=path, overrides=overrides, cwd=cwd)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``training.max_steps=10`` -> (["training", "max_steps"], 10). Values are TOML
    (``true``, ``2e-4``, ``["a", "b"]``, ``"s"``); anything that is not TOML is a string."""
    key, sep, value = text.partition("=")
    parts = [p.strip() for p in key.split(".")]
    if not sep or len(parts) < 2 or not all(parts):
        raise RecipeError(
            "--set",
            [
                RecipeProblem(
                    text.strip() or repr(text),
                    "expected section.key=value, e.g. training.max_steps=10",
                )
            ],
        )
    try:
        parsed = tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value.strip()
    return parts, parsed


def validate_recipe(
    raw: Mapping[str, Any],
    *,
    path: str | Path | None = None,
    overrides: Iterable[str] = (),
    cwd: Path | None = None,
) -> Recipe:
    """Validate a recipe given as nested dicts (as parsed from TOML); raise a RecipeError
    listing every problem found."""
    label = str(path) if path is not None else "<recipe>"
    base_dir = Path(path).resolve().parent if path is not None else Path.cwd()
    cwd = cwd or Path.cwd()

    data = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in raw.items()}
    problems: list[RecipeProblem] = []
    _resolve_paths(data, base_dir, problems)
    from_cli: dict[str, Any] = {}
    for text in overrides:
        keys, value = parse_override(text)
        target = data
        for key in keys[:-1]:
            if not isinstance(target.get(key), dict):
                target[key] = {}
            target = target[key]
        target[keys[-1]] = value
        if len(keys) == 2:
            from_cli.setdefault(keys[0], {})[keys[1]] = value
    for section_name, values in from_cli.items():
        if isinstance(data.get(section_name), dict):
            _resolve_paths({section_name: values}, cwd, problems)
            data[section_name].update(values)

    sections: dict[str, Section] = {}
    for key in data:
        if key not in SECTIONS:
            problems.append(
                RecipeProblem(_key(key), "unknown section" + _did_you_mean(str(key), SECTIONS))
            )
    for name, cls in SECTIONS.items():
        if name not in data:
            if name in REQUIRED_SECTIONS:
                problems.append(RecipeProblem(name, f"missing section: add a [{name}] table"))
                continue
            if name == "hub":
                continue
            data[name] = {}  # defaults, with the default plugin's options filled in
        if not isinstance(data[name], dict):
            problems.append(
                RecipeProblem(name, f"expected a [{name}] table, found {_show(data[name])}")
            )
            continue
        if name == "data" and "sources" in data[name]:
            section = _validate_sources(data[name], problems)
        elif name == "data" and {"mix", "weight"} & set(data[name]):
            for key in sorted({"mix", "weight"} & set(data[name])):
                problems.append(
                    RecipeProblem(f"data.{key}", "mixes [[data.sources]]; this recipe has one")
                )
            section = None
        else:
            section = _validate_section(name, cls, data[name], problems)
        if section is not None:
            sections[name] = section

    problems += _streaming_problems(sections)
    if problems:
        raise RecipeError(label, problems)
    recipe = Recipe(**sections, path=Path(path).resolve() if path is not None else None)
    plugins = resolve_plugins(recipe)
    for plugin in plugins:
        try:
            problems.extend(plugin.recipe_problems(recipe, plugins))
        except Exception as exc:  # a plugin written for another version, or broken
            raise PluginError(
                f"the {plugin.kind} '{plugin.name}' failed while checking the recipe "
                f"({describe(exc)}); it may be written for another version of adaptool."
            ) from None
    if problems:
        raise RecipeError(label, problems)
    return recipe


def _validate_section(
    name: str,
    cls: type[Section],
    values: dict[str, Any],
    problems: list[RecipeProblem],
) -> Section | None:
    core_keys = [k for k in cls.model_fields if k != "options"]
    core = {k: v for k, v in values.items() if k in core_keys}
    extra = {k: v for k, v in values.items() if k not in core_keys}
    ok = True
    cross = cls.cross_key_problems(core)
    problems.extend(RecipeProblem(name, message) for message in cross)
    try:
        section = cls.model_validate(core)
    except ValidationError as exc:
        if not cross:
            problems.extend(_problems_from(exc, prefix=name))
        else:  # the cross-key rule failing again is already reported
            problems.extend(p for p in _problems_from(exc, prefix=name) if p.key != name)
        section, ok = None, False

    if cls.plugin_tables is not None:
        return _validate_plugin_tables(name, cls, section, extra, problems) if ok else None

    if cls.plugin_key is None:
        for key in extra:
            problems.append(
                RecipeProblem(f"{name}.{key}", "unknown key" + _did_you_mean(key, core_keys))
            )
        return section if ok and not extra else None

    name_key, kind = cls.plugin_key
    plugin_name = core.get(name_key, cls.model_fields[name_key].default)
    if not isinstance(plugin_name, str):
        return None  # already reported by the section's own validation
    try:
        plugin_cls = registry().get(kind, plugin_name)
    except PluginError as exc:
        problems.append(RecipeProblem(f"{name}.{name_key}", str(exc)))
        # the other keys may be options of the intended plugin: report only likely typos
        for key in extra:
            if hint := _did_you_mean(key, core_keys):
                problems.append(RecipeProblem(f"{name}.{key}", "unknown key" + hint))
        return None
    option_keys = list(plugin_cls.Options.model_fields)
    unknown = [k for k in extra if k not in option_keys]
    for key in unknown:
        known = core_keys + option_keys
        problems.append(
            RecipeProblem(
                f"{name}.{key}",
                f"unknown key (neither a [{name}] key nor an option of {kind} "
                f"'{plugin_name}')" + _did_you_mean(key, known),
            )
        )
    try:
        options = plugin_cls.Options.model_validate(
            {k: extra[k] for k in extra if k in option_keys}
        )
    except ValidationError as exc:
        problems.extend(_problems_from(exc, prefix=name, note=f" ({kind} '{plugin_name}' option)"))
        return None
    if not ok or unknown:
        return None
    return section.model_copy(update={"options": options.model_dump()})


def _validate_sources(values: dict[str, Any], problems: list[RecipeProblem]) -> Section | None:
    """``[data]`` with ``[[data.sources]]``: each source validated as a [data] section of its
    own (its formatter's options included), the shared keys of [data] its defaults; the
    section itself is the first source's, with every source in ``sources``."""
    before = len(problems)
    values = dict(values)
    tables = values.pop("sources")
    if not isinstance(tables, list) or not tables or not all(isinstance(t, dict) for t in tables):
        problems.append(
            RecipeProblem("data.sources", "expected [[data.sources]] tables, one per source")
        )
        return None
    own = [k for k in ("source", "formatter", "config", "revision", "weight") if k in values]
    for key in own:
        problems.append(
            RecipeProblem(f"data.{key}", "with [[data.sources]], set it in each source's table")
        )
    shared = {k: values.pop(k) for k in SHARED_KEYS if k in values}
    mix = values.pop("mix", "concatenate")
    for key in values:
        if key not in own:
            problems.append(RecipeProblem(f"data.{key}", "unknown key beside [[data.sources]]"))
    sources = []
    for i, table in enumerate(tables):
        for key in sorted({"sources", "mix"} & set(table)):
            problems.append(RecipeProblem(f"data.sources[{i}].{key}", "belongs in [data]"))
        section = _validate_section(f"data.sources[{i}]", DataSection, shared | table, problems)
        if section is not None:
            sources.append(section)
    if mix not in ("concatenate", "weights"):
        problems.append(
            RecipeProblem("data.mix", f"expected concatenate or weights, found {mix!r}")
        )
    weighted = [s.weight is not None for s in sources]
    if mix == "weights" and not all(weighted):
        problems.append(RecipeProblem("data.mix", 'mix = "weights" needs a weight in every source'))
    if mix == "concatenate" and any(weighted):
        problems.append(
            RecipeProblem("data.sources", 'a source has a weight: set data.mix = "weights"')
        )
    if len(problems) > before or own or len(sources) != len(tables):
        return None
    return sources[0].model_copy(update={"sources": sources, "mix": mix})


def _streaming_problems(sections: Mapping[str, Section]) -> list[RecipeProblem]:
    """A streamed source has no length until it is read: training needs a step count, and
    nothing can be held out of it or mixed with it by size."""
    data, training = sections.get("data"), sections.get("training")
    streamed = [s for s in data.all_sources if s.streaming] if data is not None else []
    if not streamed:
        return []
    problems = []
    if len(data.all_sources) > 1:
        problems.append(
            RecipeProblem("data.streaming", "a streamed source must be the recipe's only source")
        )
    if any(s.eval_fraction for s in streamed):
        problems.append(
            RecipeProblem(
                "data.eval_fraction",
                "a streamed source has no size to hold a fraction of out: set it to 0",
            )
        )
    if training is not None and training.max_steps is None:
        problems.append(
            RecipeProblem(
                "training.max_steps",
                "a streamed source has no known length: set max_steps (epochs cannot be counted)",
            )
        )
    return problems


def _validate_plugin_tables(
    name: str,
    cls: type[Section],
    section: Section,
    tables: dict[str, Any],
    problems: list[RecipeProblem],
) -> Section | None:
    """A section of several plugins of one kind (``[logging]``, ``[callbacks]``): each other
    key is a ``[name.<plugin>]`` table of that plugin's options; ``to``, where the section has
    it, lists the plugins used (a table for one not listed is a mistake)."""
    kind = cls.plugin_tables
    listed = getattr(section, "to", None)
    before = len(problems)
    options: dict[str, dict[str, Any]] = {}
    for plugin_name in listed or []:
        try:
            registry().get(kind, plugin_name)
        except PluginError as exc:
            problems.append(RecipeProblem(f"{name}.to", str(exc)))
    for plugin_name, values in tables.items():
        key = f"{name}.{plugin_name}"
        if not isinstance(values, dict):
            problems.append(
                RecipeProblem(key, f"expected a [{key}] table of options, found {_show(values)}")
            )
            continue
        if listed is not None and plugin_name not in listed:
            problems.append(
                RecipeProblem(key, f"options for '{plugin_name}', which {name}.to does not list")
            )
            continue
        try:
            plugin_cls = registry().get(kind, plugin_name)
        except PluginError as exc:
            problems.append(RecipeProblem(key, str(exc)))
            continue
        try:
            validated = plugin_cls.Options.model_validate(values)
        except ValidationError as exc:
            problems.extend(
                _problems_from(exc, prefix=key, note=f" ({kind} '{plugin_name}' option)")
            )
            continue
        options[plugin_name] = validated.model_dump()
    if len(problems) > before:
        return None
    return section.model_copy(update={"options": options})


#: the keys that hold a path (or a Hub id), by section; ``always``: a path, never a Hub id
PATH_KEYS = (("model", "name", False), ("data", "source", False), ("output", "dir", True))


def _resolve_paths(data: dict[str, Any], base: Path, problems: list[RecipeProblem]) -> None:
    """Make local paths absolute against ``base`` (in place); Hub ids are left alone. A value
    that cannot be a path here (``~nosuchuser/x``, a name too long) is a problem."""
    for section, key, always in PATH_KEYS:
        values = data.get(section)
        if not isinstance(values, dict) or not isinstance(values.get(key), str):
            continue
        value = values[key]
        if not value or not value.isprintable():
            continue  # left for validation to report
        if not always and is_hub_id(value, relative_to=base):
            continue
        try:
            values[key] = str((base / Path(value).expanduser()).resolve())
        except (OSError, RuntimeError, ValueError) as exc:
            problems.append(
                RecipeProblem(f"{section}.{key}", f"cannot be a path here ({describe(exc)})")
            )
    if isinstance(data.get("data"), dict):
        _resolve_option_paths(data["data"], base)
    sources = data.get("data", {}).get("sources") if isinstance(data.get("data"), dict) else None
    for table in sources if isinstance(sources, list) else []:
        if isinstance(table, dict):
            _resolve_paths({"data": table}, base, problems)


def _resolve_option_paths(values: dict[str, Any], base: Path) -> None:
    """A formatter option marked :class:`~adaptool.base.RecipeRelative` whose relative value
    names a file beside the recipe: made absolute (in place)."""
    from adaptool.base import recipe_relative

    try:
        options = registry().entry("formatter", str(values.get("formatter"))).cls.Options
    except (PluginError, AttributeError, KeyError):
        return  # an unknown plugin is reported by validation
    for field_name in recipe_relative(options):
        value = values.get(field_name)
        if not (isinstance(value, str) and value):
            continue
        try:  # anything that is not a file here (a name, a pasted template) is left alone
            candidate = base / Path(value).expanduser()
            if not Path(value).is_absolute() and candidate.is_file():
                values[field_name] = str(candidate.resolve())
        except (OSError, RuntimeError, ValueError):
            continue


def _key(name: object) -> str:
    """A key as a problem names it: as written, or quoted when it would not show."""
    text = str(name)
    return text if text.strip() and text.isprintable() else repr(text)


def _did_you_mean(key: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def _show(value: Any) -> str:
    kinds = {
        bool: "boolean",
        int: "integer",
        float: "float",
        str: "string",
        list: "array",
        dict: "table",
    }
    kind = kinds.get(type(value), type(value).__name__)
    shown = f'"{value}"' if isinstance(value, str) else repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return f"{shown} ({kind})"


def _problems_from(exc: ValidationError, *, prefix: str, note: str = "") -> list[RecipeProblem]:
    """One problem per key; the members of a union (``true`` or ``"auto"``) are joined by 'or'."""
    expected: dict[str, list[str]] = {}
    found: dict[str, Any] = {}
    for err in exc.errors():
        loc = [str(p) for p in err["loc"] if not _is_union_tag(p)]
        key = ".".join([prefix, *loc]) if loc else prefix
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "missing":
            msg = "required key is missing"
        elif loc:
            msg = "expected " + msg.removeprefix("Input should be ")
            found.setdefault(key, err["input"])
        if msg not in expected.setdefault(key, []):
            expected[key].append(msg)
    problems = []
    for key, msgs in expected.items():
        text = " or ".join([msgs[0], *(m.removeprefix("expected ") for m in msgs[1:])]) + note
        if key in found:
            text += f", found {_show(found[key])}"
        problems.append(RecipeProblem(key, text))
    return problems


def _is_union_tag(part: Any) -> bool:
    """pydantic adds the union member to a location (``literal['auto']``, ``list[str]``, a
    bounded number's ``constrained-int``)."""
    return isinstance(part, str) and (
        "[" in part or part in {"str", "int", "float", "bool"} or part.startswith("constrained-")
    )
