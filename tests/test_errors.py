"""The error hierarchy: parameters named in messages (library form vs CLI flags), RecipeError
listing every problem, exit codes, the warning class and describe()."""

from __future__ import annotations

import warnings

import pytest

import adaptool.errors as errors
from adaptool.errors import (
    AdapterError,
    AdaptoolError,
    AdaptoolWarning,
    RecipeError,
    RecipeProblem,
    describe,
    param,
)

ERROR_CLASSES = [
    errors.RecipeError,
    errors.PluginError,
    errors.DataError,
    errors.ModelError,
    errors.AdapterError,
    errors.HubError,
    errors.OutputError,
    errors.OutputExists,
    errors.MergeVerificationError,
    errors.TrainingError,
]


def test_a_param_renders_as_name_equals_value_in_the_library():
    error = AdapterError(f"the folder does not say its base; pass {param('base')}.")
    assert str(error) == "the folder does not say its base; pass base=...."
    shown = AdapterError(f"{param('dtype', repr('int8'))} is not a dtype")
    assert str(shown) == "dtype='int8' is not a dtype"
    assert "\x02" not in str(shown) and "\x1f" not in str(shown) and "\x03" not in str(shown)


def test_a_param_renders_as_the_commands_flag():
    error = AdapterError(f"pass {param('base')} or {param('adapter', 'DIR')}.")
    assert error.render({"base": "--base", "adapter": "--adapter"}) == "pass --base or --adapter."
    assert error.render({"base": "--base"}) == "pass --base or adapter=DIR."
    assert error.render({}) == str(error) == "pass base=... or adapter=DIR."
    assert error.render() == str(error)


def test_a_message_without_params_renders_as_written():
    assert AdaptoolError("plain [text] = 1").render({"base": "--base"}) == "plain [text] = 1"


def test_recipe_error_lists_every_problem_with_path_and_count():
    problems = [
        RecipeProblem("training.learning_rate", 'expected a float, found "fast" (string)'),
        RecipeProblem("", "not valid TOML"),
    ]
    error = RecipeError("r.toml", problems)
    assert error.path == "r.toml"
    assert error.problems == problems
    assert str(error).splitlines() == [
        "r.toml has 2 problems:",
        '  - training.learning_rate: expected a float, found "fast" (string)',
        "  - (top level): not valid TOML",
    ]
    one = RecipeError("x.toml", [RecipeProblem("model", "missing section")])
    assert str(one).splitlines()[0] == "x.toml has 1 problem:"


def test_recipe_problem_renders_key_and_message():
    assert str(RecipeProblem("peft.r", "expected > 0")) == "peft.r: expected > 0"
    assert str(RecipeProblem("", "empty")) == "(top level): empty"


@pytest.mark.parametrize("cls", ERROR_CLASSES)
def test_every_error_is_an_adaptool_error_with_exit_code_2(cls):
    assert issubclass(cls, AdaptoolError)
    assert cls.exit_code == 2


def test_every_error_class_in_the_module_is_listed_here():
    found = {
        obj
        for obj in vars(errors).values()
        if isinstance(obj, type) and issubclass(obj, Exception) and obj is not AdaptoolError
        if obj.__module__ == errors.__name__ and not issubclass(obj, Warning)
    }
    assert found == set(ERROR_CLASSES)


def test_output_exists_is_an_output_error():
    assert issubclass(errors.OutputExists, errors.OutputError)


def test_adaptool_warning_is_a_user_warning():
    assert issubclass(AdaptoolWarning, UserWarning)
    assert not issubclass(AdaptoolWarning, AdaptoolError)
    with pytest.warns(UserWarning, match="heads up"):
        warnings.warn("heads up", AdaptoolWarning, stacklevel=1)


def test_describe_gives_the_type_and_the_first_line():
    assert describe(ValueError("bad value\nmore detail")) == "ValueError: bad value"
    assert describe(OSError("\n  disk full\nx")) == "OSError: disk full"
    assert describe(KeyError()) == "KeyError"
    assert describe(RuntimeError("")) == "RuntimeError"
