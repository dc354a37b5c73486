"""Training progress: plain lines on a non-terminal console (step/total, loss, lr, tok/s, ETA),
info() printed as is, the silent base Reporter, and the ETA format."""

from __future__ import annotations

import io
from types import SimpleNamespace

import pytest
from rich.console import Console

from adaptool.training import progress
from adaptool.training.progress import ConsoleReporter, Reporter, _eta


def plain_console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=False, width=200, color_system=None), out


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(progress, "time", SimpleNamespace(monotonic=fake))
    return fake


def test_one_plain_line_per_log(clock):
    console, out = plain_console()
    reporter = ConsoleReporter(console)
    reporter.start(total=100, initial=0)
    assert reporter.progress is None  # no live bar off a terminal
    clock.now += 20.0
    reporter.log({"step": 10, "loss": 1.23456, "lr": 2e-4, "tokens_per_s": 1234.4})
    clock.now += 20.0
    reporter.log({"step": 20, "loss": 0.5, "eval_loss": 0.75})
    reporter.finish()
    assert out.getvalue().splitlines() == [
        "step 10/100  loss 1.2346  lr 2.00e-04  1234 tok/s  ETA 3m00s",
        "step 20/100  loss 0.5000  eval_loss 0.7500  ETA 2m40s",
    ]


def test_eta_counts_from_the_resumed_step(clock):
    console, out = plain_console()
    reporter = ConsoleReporter(console)
    reporter.start(total=100, initial=50)
    clock.now += 10.0
    reporter.log({"step": 60, "loss": 1.0})  # 10 steps in 10 s, 40 to go
    assert out.getvalue().strip() == "step 60/100  loss 1.0000  ETA 0m40s"


def test_a_log_at_the_start_step_has_no_eta_yet(clock):
    console, out = plain_console()
    reporter = ConsoleReporter(console)
    reporter.start(total=8, initial=4)
    reporter.log({"step": 4, "eval_loss": 2.0})
    assert out.getvalue().strip() == "step 4/8  eval_loss 2.0000  ETA 0m00s"


def test_info_prints_text_as_is():
    console, out = plain_console()
    ConsoleReporter(console).info("[bold]x[/bold] and [red]y[/red] at 0x10 (1, 2)")
    assert out.getvalue() == "[bold]x[/bold] and [red]y[/red] at 0x10 (1, 2)\n"


def test_the_base_reporter_says_nothing(capsys):
    reporter = Reporter()
    reporter.info("hello")
    reporter.start(total=3, initial=0)
    reporter.log({"step": 1, "loss": 1.0})
    reporter.finish()
    assert capsys.readouterr() == ("", "")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0m00s"),
        (-5, "0m00s"),
        (59.9, "0m59s"),
        (61, "1m01s"),
        (3599, "59m59s"),
        (3600, "1h00m00s"),
        (3 * 3600 + 5 * 60 + 7, "3h05m07s"),
        (30 * 3600, "30h00m00s"),
    ],
)
def test_eta_format(seconds, text):
    assert _eta(seconds) == text
