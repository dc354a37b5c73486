"""Built-in callbacks: early stopping, and keeping the best checkpoint — by eval loss, or by
the formatter's own metric on greedy generations for held-out rows (``tag_f1`` for the
quote→tags formatter): the adapter shipped is the best one seen, not the last."""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from adaptool.artifacts.layout import CHECKPOINTS
from adaptool.base import Callback, Options, TrainingContext
from adaptool.errors import TrainingError
from adaptool.hookspecs import hookimpl

#: the best adapter so far, as checkpoints/best-<step> (the method's checkpoint format)
BEST = "best"


class MetricOptions(Options):
    #: ``eval_loss``, or a score of the formatter on held-out generations (``tag_f1``)
    metric: str = "eval_loss"
    #: ``auto``: lower is better for a loss, higher for anything else
    mode: Literal["auto", "min", "max"] = "auto"
    #: held-out rows generated on for a formatter metric, and their length
    rows: int = Field(default=64, gt=0, le=100_000)
    max_new_tokens: int = Field(default=64, gt=0, le=100_000)


class _Tracked(Callback):
    """A callback that follows one metric at every evaluation."""

    needs_eval = True

    def __init__(self, options: Options | None = None) -> None:
        super().__init__(options)
        self.best: float | None = None
        self.best_step: int | None = None

    @property
    def key(self) -> str:
        metric = self.options.metric
        return metric if metric.startswith("eval_") else f"eval_{metric}"

    @property
    def lower_is_better(self) -> bool:
        mode = self.options.mode
        return self.key.endswith("loss") if mode == "auto" else mode == "min"

    def measure(self, context: TrainingContext, record: Mapping[str, Any]) -> tuple[float, dict]:
        """The metric at this evaluation, and the formatter's scores when they were computed
        for it (to be logged)."""
        added: dict[str, Any] = {}
        if self.key not in record:
            added = context.generation_scores(self.options.rows, self.options.max_new_tokens)
        found = {**record, **added}
        if self.key not in found:
            available = sorted(k for k in found if k.startswith("eval_"))
            raise TrainingError(
                f"the '{self.name}' callback follows {self.options.metric}, which neither the "
                f"evaluation nor the formatter '{context.formatter.name}' reports (it reports "
                f"{', '.join(available)}); set callbacks.{self.name}.metric to one of them."
            )
        return float(found[self.key]), added

    def improves(self, value: float, margin: float = 0.0) -> bool:
        if not math.isfinite(value):
            return False
        if self.best is None:
            return True
        return value < self.best - margin if self.lower_is_better else value > self.best + margin

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_step": self.best_step}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best, self.best_step = state.get("best"), state.get("best_step")


class EarlyStopping(_Tracked):
    """Stops the run once the metric has not improved (by more than ``min_delta``) for
    ``patience`` evaluations in a row; the run then finishes as usual."""

    name = "early-stopping"
    description = "stop when the eval metric stops improving"

    class Options(MetricOptions):
        patience: int = Field(default=3, gt=0)
        min_delta: float = Field(default=0.0, ge=0, allow_inf_nan=False)

    def __init__(self, options: Options | None = None) -> None:
        super().__init__(options)
        self.waited = 0

    def on_eval(self, context: TrainingContext, record: Mapping[str, Any]) -> dict[str, Any]:
        value, added = self.measure(context, record)
        if self.improves(value, self.options.min_delta):
            self.best, self.best_step, self.waited = value, context.step, 0
        else:
            self.waited += 1
        if self.waited >= self.options.patience:
            best = (
                f"best {self.best:.4g} at step {self.best_step}"
                if self.best is not None
                else "no finite value yet"
            )
            context.stop(
                f"early stopping: {self.key} has not improved for {self.waited} evaluations "
                f"({best})"
            )
        return added

    def on_end(self, context: TrainingContext) -> dict[str, Any]:
        return {"metric": self.key, "best": self.best, "best_step": self.best_step}

    def state_dict(self) -> dict[str, Any]:
        return super().state_dict() | {"waited": self.waited}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.waited = int(state.get("waited", 0))


class BestCheckpoint(_Tracked):
    """Keeps the adapter of the best evaluation in ``checkpoints/best-<step>`` and ships it: at
    the end of the run the model is put back to it, so the output dir holds the best adapter.
    An earlier best is removed only once a checkpoint no longer names it, so a run killed at
    any point resumes with the best its checkpoint recorded."""

    name = "best-checkpoint"
    description = "ship the adapter of the best evaluation"

    class Options(MetricOptions):
        pass

    def on_eval(self, context: TrainingContext, record: Mapping[str, Any]) -> dict[str, Any]:
        value, added = self.measure(context, record)
        if self.improves(value):
            folder = best_dir(context.output_dir, context.step)
            tmp = folder.with_name(folder.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            context.save_trainable(tmp)
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(tmp, folder)
            self.best, self.best_step = value, context.step
        return added

    def on_save(self, context: TrainingContext, checkpoint: Path) -> None:
        """Keep the best folders a checkpoint on disk names (a torn newest checkpoint falls
        back to the one before, which may name an earlier best) and the current one."""
        keep = self._named_by_checkpoints(context.output_dir)
        if self.best_step is not None:
            keep.add(best_dir(context.output_dir, self.best_step))
        self._remove_bests(context.output_dir, keep)

    def _named_by_checkpoints(self, output: Path) -> set[Path]:
        from adaptool.training.checkpoint import read_state

        named = set()
        for folder in (output / CHECKPOINTS).glob("step-*"):
            state = read_state(folder) or {}
            step = ((state.get("callbacks") or {}).get(self.name) or {}).get("best_step")
            if isinstance(step, int):
                named.add(best_dir(output, step))
        return named

    @staticmethod
    def _remove_bests(output: Path, keep: set[Path]) -> None:
        for old in (output / CHECKPOINTS).glob(f"{BEST}-*"):
            if old not in keep:
                shutil.rmtree(old, ignore_errors=True)

    def on_end(self, context: TrainingContext) -> dict[str, Any]:
        if self.best_step is None:
            return {"metric": self.key, "best": None, "best_step": None}
        folder = best_dir(context.output_dir, self.best_step)
        if self.best_step != context.step:
            if not folder.is_dir():
                raise TrainingError(
                    f"the best adapter so far (step {self.best_step}) should be in {folder}, "
                    f"which is gone; the run's last checkpoints are kept in "
                    f"{context.output_dir / CHECKPOINTS}."
                )
            context.load_trainable(folder)
        # shipped now: only what a checkpoint on disk still names stays, for a resume
        self._remove_bests(context.output_dir, self._named_by_checkpoints(context.output_dir))
        return {
            "metric": self.key,
            "best": self.best,
            "best_step": self.best_step,
            "shipped_step": self.best_step,
        }


def best_dir(output: Path, step: int) -> Path:
    return output / CHECKPOINTS / f"{BEST}-{step:07d}"


@hookimpl
def register_callbacks(register) -> None:
    register(EarlyStopping)
    register(BestCheckpoint)
