"""Training progress: a rich progress bar on a terminal, plain log lines otherwise."""

from __future__ import annotations

import time
from typing import Any


def _eta(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class Reporter:
    """What the trainer tells the world. This base says nothing (library use, tests)."""

    def info(self, message: str) -> None:
        pass

    def start(self, *, total: int, initial: int) -> None:
        pass

    def log(self, record: dict[str, Any]) -> None:
        pass

    def finish(self) -> None:
        pass


class ConsoleReporter(Reporter):
    """Step / total, loss, learning rate, tokens/s, ETA — live on a TTY, a line per log on
    anything else (CI logs, pipes)."""

    def __init__(self, console: Any) -> None:
        self.console = console
        self.progress: Any = None
        self.task: Any = None
        self.total = 0
        self.initial = 0
        self.started = time.monotonic()

    def info(self, message: str) -> None:
        self.console.print(message, markup=False, highlight=False)

    def start(self, *, total: int, initial: int) -> None:
        self.total, self.initial, self.started = total, initial, time.monotonic()
        if self.console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self.progress = Progress(
                TextColumn("step"),
                MofNCompleteColumn(),
                BarColumn(),
                TextColumn("{task.fields[stats]}"),
                console=self.console,
                transient=False,
            )
            self.task = self.progress.add_task(
                "train", total=total, completed=initial, stats="starting"
            )
            self.progress.start()

    def _stats(self, record: dict[str, Any]) -> str:
        done = record["step"] - self.initial
        elapsed = time.monotonic() - self.started
        eta = elapsed / done * (self.total - record["step"]) if done else 0.0
        parts = [f"loss {record['loss']:.4f}"] if "loss" in record else []
        if "eval_loss" in record:
            parts.append(f"eval_loss {record['eval_loss']:.4f}")
        if "lr" in record:
            parts.append(f"lr {record['lr']:.2e}")
        if "tokens_per_s" in record:
            parts.append(f"{record['tokens_per_s']:.0f} tok/s")
        parts.append(f"ETA {_eta(eta)}")
        return "  ".join(parts)

    def log(self, record: dict[str, Any]) -> None:
        stats = self._stats(record)
        if self.progress is not None:
            self.progress.update(self.task, completed=record["step"], stats=stats)
        else:
            self.console.print(
                f"step {record['step']}/{self.total}  {stats}", markup=False, highlight=False
            )

    def finish(self) -> None:
        if self.progress is not None:
            self.progress.stop()
