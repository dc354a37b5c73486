"""The registry's clash policy: one rule for every kind and for commands."""

from __future__ import annotations

import pytest

from adaptool import PluginError
from adaptool.builtin.formatters import Text
from adaptool.registry import Claims, Provider, Registry

ADAPTOOL = Provider("adaptool.builtin.formatters", "adaptool", "0.1", builtin=True)
ONE = Provider("fake_one", "fake-one", "1.0")
TWO = Provider("fake_two", "fake-two", "2.0")
THREE = Provider("fake_three", "fake-three", "3.0")


def formatter(name: str) -> type[Text]:
    return type(f"Formatter_{name}", (Text,), {"name": name})


def test_a_builtin_name_stays_the_builtins():
    registry = Registry()
    assert registry.add("formatter", Text, ADAPTOOL) == []
    [(loser, message)] = registry.add("formatter", formatter("text"), ONE)
    assert loser == ONE
    assert "the formatter 'text' is already provided by adaptool 0.1" in message
    assert "is not added" in message
    assert registry.get("formatter", "text") is Text
    assert registry.provided_by("formatter", ADAPTOOL) == ["text"]
    assert registry.provided_by("formatter", ONE) == []


def test_two_third_party_claims_make_a_name_unusable_and_both_are_reported():
    registry = Registry()
    assert registry.add("formatter", formatter("shout"), ONE) == []
    losses = registry.add("formatter", formatter("shout"), TWO)
    assert [loser for loser, _ in losses] == [ONE, TWO]
    for _, message in losses:
        assert "fake-one 1.0" in message and "fake-two 2.0" in message
    [(loser, _)] = registry.add("formatter", formatter("shout"), THREE)  # already unusable
    assert loser == THREE
    with pytest.raises(PluginError) as err:
        registry.get("formatter", "shout")
    assert all(d in str(err.value) for d in ("fake-one", "fake-two", "fake-three"))
    assert registry.provided_by("formatter", ONE) == []


def test_commands_follow_the_same_policy():
    commands = Claims("command")
    assert commands.claim("plugins", ADAPTOOL) == []
    assert commands.claim("hello", ONE) == []
    [(loser, message)] = commands.claim("plugins", ONE)
    assert loser == ONE and "the command 'plugins' is already provided by adaptool" in message
    assert [loser for loser, _ in commands.claim("hello", TWO)] == [ONE, TWO]
    assert commands.holds("plugins", ADAPTOOL)
    assert not commands.holds("hello", ONE) and not commands.holds("hello", TWO)


def test_a_method_written_for_the_old_peft_config_signature_is_refused_with_the_fix():
    from adaptool import PeftMethod, PluginError
    from adaptool.registry import check_registration

    class Old(PeftMethod):
        name = "old"

        def peft_config(self, settings):
            return None

    with pytest.raises(PluginError, match=r"peft_config\(settings, run\)"):
        check_registration("peft-method", Old)


def test_an_adapter_s_peft_type_finds_its_method_however_it_is_spelled():
    """Adapters made without adaptool find their method plugin by peft's type; a config that
    names none is no method's (not the first plugin that declares no type)."""
    from adaptool.plugins import load_plugins

    registry = load_plugins(entry_points=False).registry
    assert {registry.method_for_peft_type(t) for t in ("LORA", "PeftType.LORA", "lora")} == {"lora"}
    assert registry.method_for_peft_type("") is None
    assert registry.method_for_peft_type("NOT_A_TYPE") is None
