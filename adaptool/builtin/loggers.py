"""Built-in loggers: TensorBoard event files (``[logging] to = ["tensorboard"]``), written with
tensorboardX, a light writer that needs neither TensorFlow nor the TensorBoard server; and
MLflow (``to = ["mlflow"]``), when mlflow (or mlflow-skinny: ``pip install adaptool[mlflow]``)
is installed.

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


class MLflow(Logger):
    """An MLflow run per training run: the resolved recipe as parameters, every number of every
    record as a metric. A resumed run continues its MLflow run (found by the output dir)."""

    name = "mlflow"
    description = "MLflow tracking (needs mlflow or mlflow-skinny)"
    #: the tag that ties an MLflow run to its output dir
    TAG = "adaptool.output_dir"

    class Options(Options):
        #: where runs go: a tracking server URL, sqlite:///mlflow.db, ...; default: MLflow's
        #: own (MLFLOW_TRACKING_URI)
        tracking_uri: str | None = None
        experiment: str = "adaptool"
        #: default: the output dir's name
        run_name: str | None = None

    def __init__(self, options: Options | None = None) -> None:
        super().__init__(options)
        self.client: Any = None
        self.run_id: str | None = None

    def recipe_problems(self, recipe: Any, plugins: Any) -> list:
        from importlib.util import find_spec

        from adaptool.errors import RecipeProblem

        if find_spec("mlflow") is None:
            return [
                RecipeProblem(
                    "logging.to",
                    "the mlflow logger needs MLflow: pip install 'adaptool[mlflow]' (or mlflow)",
                )
            ]
        return []

    def start(self, context: TrainingContext) -> None:
        from mlflow.tracking import MlflowClient

        client = self.client = MlflowClient(tracking_uri=self.options.tracking_uri)
        experiment = client.get_experiment_by_name(self.options.experiment)
        experiment_id = (
            experiment.experiment_id
            if experiment is not None
            else client.create_experiment(self.options.experiment)
        )
        out = str(context.output_dir)
        if context.resumed_from is not None:
            found = client.search_runs(
                [experiment_id],
                filter_string=f"tags.`{self.TAG}` = '{out}'",
                order_by=["attributes.start_time DESC"],
                max_results=1,
            )
            if found:
                self.run_id = found[0].info.run_id
                client.update_run(self.run_id, status="RUNNING")
                return
        run = client.create_run(
            experiment_id,
            run_name=self.options.run_name or context.output_dir.name,
            tags={self.TAG: out},
        )
        self.run_id = run.info.run_id
        from mlflow.entities import Param

        params = [Param(k, str(v)[:500]) for k, v in _flatten(context.recipe.to_dict()).items()]
        for start in range(0, len(params), 100):  # MLflow takes 100 parameters per batch
            client.log_batch(self.run_id, params=params[start : start + 100])

    def log(self, record: Mapping[str, Any]) -> None:
        import time

        from mlflow.entities import Metric

        now, step = int(time.time() * 1000), int(record["step"])
        metrics = [
            Metric(key, float(value), now, step)
            for key, value in record.items()
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool)
        ]
        self.client.log_batch(self.run_id, metrics=metrics)

    def finish(self, context: TrainingContext) -> None:
        if self.client is None or self.run_id is None:
            return
        done = context.step >= context.total_steps or context.stop_reason is not None
        self.client.set_terminated(self.run_id, status="FINISHED" if done else "KILLED")


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"peft": {"r": 8}}`` -> ``{"peft.r": 8}``."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat |= _flatten(value, name + ".")
        else:
            flat[name] = value
    return flat


@hookimpl
def register_loggers(register) -> None:
    register(TensorBoard)
    register(MLflow)
