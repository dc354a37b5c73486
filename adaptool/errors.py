"""Every error (and warning) adaptool raises, in one hierarchy. The CLI turns each
AdaptoolError into one paragraph and exit code 2.

A message names the parameter a user can change with :func:`param`: the library renders it as
``base=...``, the command line as the command's own flag (``--base``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

_PARAM = re.compile("\x02([a-z_]+)\x1f([^\x03]*)\x03")


def param(name: str, value: str = "...") -> str:
    """Name the parameter ``name`` in a message: rendered ``name=value`` by the library and as
    the flag (``--name``) by the CLI command that has it."""
    return f"\x02{name}\x1f{value}\x03"


class AdaptoolError(Exception):
    """Base of every error adaptool reports to a user (bad input, not a bug).

    ``str(error)`` is a complete, one-paragraph explanation naming the culprit.
    """

    exit_code = 2

    def render(self, flags: Mapping[str, str] | None = None) -> str:
        """The message with parameters named as ``flags`` says (``{"base": "--base"}``), and
        as keyword arguments where it does not."""
        flags = flags or {}
        text = super().__str__()
        return _PARAM.sub(lambda m: flags.get(m[1]) or f"{m[1]}={m[2]}", text)

    def __str__(self) -> str:
        return self.render()


class RecipeError(AdaptoolError):
    """A recipe that cannot be used: every problem found, reported at once."""

    def __init__(self, path: str, problems: list[RecipeProblem]) -> None:
        self.path = path
        self.problems = problems
        n = len(problems)
        lines = [f"{path} has {n} problem{'s' if n != 1 else ''}:"]
        lines += [f"  - {p}" for p in problems]
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class RecipeProblem:
    """One problem in a recipe: the dotted key (``training.learning_rate``) and what is wrong,
    saying what was expected and what was found."""

    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key or '(top level)'}: {self.message}"


class PluginError(AdaptoolError):
    """A plugin that cannot be used: unknown name, name clash, options it no longer accepts,
    broken plugin (in strict mode)."""


class DataError(AdaptoolError):
    """A dataset that cannot be used: missing file or column, no rows."""


class ModelError(AdaptoolError):
    """A base model or tokenizer that cannot be loaded or used."""


class AdapterError(AdaptoolError):
    """An adapter (or merged model) directory that is missing, corrupt or incompatible."""


class HubError(AdaptoolError):
    """A Hugging Face Hub operation that failed (auth, missing repo, network)."""


class OutputError(AdaptoolError):
    """An output directory that cannot be written: it holds something else, or an input."""


class OutputExists(OutputError):
    """The output directory already holds something and neither resume nor overwrite was asked."""


class TrainingError(AdaptoolError):
    """Training that cannot go on: the loss or the gradients stopped being finite."""


class MergeVerificationError(AdaptoolError):
    """The merged model does not behave like the adapter it came from."""


class AdaptoolWarning(UserWarning):
    """Something the user should know that does not stop the command (the CLI prints it as one
    ``warning:`` line)."""


def describe(exc: BaseException) -> str:
    """``ExceptionType: first line of its message`` — how a library's error is quoted inside
    one of ours."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
