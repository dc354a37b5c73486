"""The one exception hierarchy. The CLI turns every AdaptoolError into a message and exit code 2."""

from __future__ import annotations

from dataclasses import dataclass


class AdaptoolError(Exception):
    """Base of every error adaptool reports to a user (bad input, not a bug).

    ``str(error)`` is a complete, one-paragraph explanation naming the culprit.
    """

    exit_code = 2


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
    """A plugin that cannot be used: unknown name, name clash, broken plugin (in strict mode)."""


class DataError(AdaptoolError):
    """A dataset that cannot be used: missing file or column, no rows."""


class ModelError(AdaptoolError):
    """A base model or tokenizer that cannot be loaded or used."""


class AdapterError(AdaptoolError):
    """An adapter directory that is missing, corrupt or incompatible."""


class HubError(AdaptoolError):
    """A Hugging Face Hub operation that failed (auth, missing repo, network)."""


def describe(exc: BaseException) -> str:
    """``ExceptionType: first line of its message`` — how a library's error is quoted inside
    one of ours."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
