"""launch: the command in N processes through torchrun's own launcher; the exit code of the
first process that failed, and a message they all hit printed once."""

from __future__ import annotations

from adaptool.launch import launch


def test_the_first_failure_is_the_exit_code_and_its_message_is_printed_once(tmp_path, capfd):
    """Both processes refuse a recipe that does not exist: exit 2, one paragraph, once."""
    missing = tmp_path / "nope.toml"
    code = launch(["train", str(missing)], nproc=2)
    assert code == 2
    err = capfd.readouterr().err
    assert err.count("nope.toml") == 1, err
    assert "Traceback" not in err


def test_a_world_that_succeeds_exits_0(tmp_path):
    assert launch(["--version"], nproc=2) == 0
