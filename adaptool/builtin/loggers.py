"""Built-in loggers: TensorBoard event files (``[logging] to = ["tensorboard"]``), written with
tensorboardX, a light writer that needs neither TensorFlow nor the TensorBoard server.

``metrics.jsonl`` is not a logger plugin: every run writes it (it is what a resumed run and
the loss plot read)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from pydantic import Field

from adaptool.base import Logger, Options, TrainingContext
from adaptool.hookspecs import hookimpl

#: where the event files go, inside the output dir
TENSORBOARD_DIR = "tensorboard"


def tag_of(key: str) -> str:
    """``eval_loss`` -> ``eval/loss``, ``eval_tag_f1`` -> ``eval/tag_f1``, ``loss`` ->
    ``train/loss``: TensorBoard groups its charts by what precedes the slash."""
    if key.startswith("eval_"):
        return "eval/" + key.removeprefix("eval_")
    return "train/" + key


class TensorBoard(Logger):
    """Scalars for every number in a record, in ``<output>/tensorboard`` (or ``dir``)."""

    name = "tensorboard"
    description = "TensorBoard event files (tensorboardX)"

    class Options(Options):
        #: where the event files go (relative: inside the output dir)
        dir: str = TENSORBOARD_DIR
        flush_secs: int = Field(default=30, gt=0)

    def __init__(self, options: Options | None = None) -> None:
        super().__init__(options)
        self.writer: Any = None

    def start(self, context: TrainingContext) -> None:
        from tensorboardX import SummaryWriter

        folder = context.output_dir / self.options.dir
        # a resumed run drops what the interrupted one logged after its checkpoint
        resumed = context.resumed_from
        self.writer = SummaryWriter(
            logdir=str(folder),
            flush_secs=self.options.flush_secs,
            purge_step=resumed + 1 if resumed is not None else None,
            # a file of its own per start: two starts in one second would share a name
            filename_suffix=f".{os.getpid()}.{context.resumed_from or 0}",
        )

    def log(self, record: Mapping[str, Any]) -> None:
        step = int(record["step"])
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(tag_of(key), float(value), step)

    def finish(self, context: TrainingContext) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


@hookimpl
def register_loggers(register) -> None:
    register(TensorBoard)
