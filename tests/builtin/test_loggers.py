"""Loggers: TensorBoard event files written by a real run and read back with TensorBoard's own
reader; a third-party logger and callback from an installed package, on the same hooks."""

from __future__ import annotations

import textwrap

import pytest

from adaptool.plugins import load_plugins, use_plugins
from adaptool.recipe import load_recipe
from adaptool.testing import install_fake_plugin
from adaptool.training.run import train
from tests.helpers import InterruptAt, method_recipe, records

LORA = 'r = 4\ntarget_modules = "all-linear"'


def scalars(folder):
    """Every scalar in the event files under ``folder``: {tag: [(step, value), ...]}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_event_files_hold_what_metrics_jsonl_holds(tmp_path, tiny_bloom_dir, plugins):
    path = method_recipe(tmp_path, tiny_bloom_dir, "lora", LORA, steps=6)
    path.write_text(path.read_text() + '\n[logging]\nto = ["tensorboard"]\n')
    out = train(load_recipe(path)).output_dir
    logged = records(out)
    found = scalars(out / "tensorboard")
    for key, tag in (
        ("loss", "train/loss"),
        ("lr", "train/lr"),
        ("grad_norm", "train/grad_norm"),
        ("tokens_per_s", "train/tokens_per_s"),
        ("eval_loss", "eval/loss"),
    ):
        expected = [(r["step"], r[key]) for r in logged if key in r]
        assert expected, key
        assert [s for s, _ in found[tag]] == [s for s, _ in expected]
        assert [v for _, v in found[tag]] == pytest.approx([v for _, v in expected], rel=1e-6)


def test_a_resumed_run_logs_each_step_once(tmp_path, tiny_bloom_dir, plugins):
    """Steps logged after the checkpoint a run resumes from (here 5 and 6, whose checkpoint is
    then lost) are logged again by the resumed run: TensorBoard shows each step once, with the
    resumed run's values."""
    import shutil

    path = method_recipe(tmp_path, tiny_bloom_dir, "lora", LORA, steps=8)
    text = path.read_text().replace("save_steps = 0", "save_steps = 4")
    path.write_text(text + '\n[logging]\nto = ["tensorboard"]\n')
    recipe = load_recipe(path)
    assert train(recipe, reporter=InterruptAt(6)).interrupted  # checkpoints at 4 and 6
    shutil.rmtree(tmp_path / "out" / "checkpoints" / "step-0000006")  # resume from 4
    out = train(recipe, resume=True).output_dir
    found = scalars(out / "tensorboard")["train/loss"]
    assert [s for s, _ in found] == list(range(1, 9))
    expected = [r["loss"] for r in records(out) if "loss" in r]
    assert [v for _, v in found] == pytest.approx(expected, rel=1e-6)


def test_tensorboard_must_be_listed_to_take_options(tmp_path, tiny_bloom_dir, plugins):
    from adaptool.errors import RecipeError

    path = method_recipe(tmp_path, tiny_bloom_dir, "lora", LORA)
    path.write_text(path.read_text() + "\n[logging.tensorboard]\nflush_secs = 5\n")
    with pytest.raises(RecipeError, match=r"which logging\.to does not list"):
        load_recipe(path)
    path.write_text(path.read_text().replace("[logging.tensorboard]", '[logging]\nto = ["wandb"]'))
    with pytest.raises(RecipeError, match="unknown logger 'wandb'"):
        load_recipe(path)


TRACKER = textwrap.dedent(
    """
    import json

    import adaptool


    class JsonLines(adaptool.Logger):
        name = "jsonlines"

        class Options(adaptool.Options):
            file: str = "tracked.jsonl"

        def start(self, context):
            self.path = context.output_dir / self.options.file

        def log(self, record):
            with self.path.open("a") as fh:
                fh.write(json.dumps(dict(record)) + "\\n")


    class StopAt(adaptool.Callback):
        name = "stop-at"

        class Options(adaptool.Options):
            step: int = 3

        def on_step(self, context, record):
            if context.step >= self.options.step:
                context.stop(f"stop-at: step {context.step}")


    @adaptool.hookimpl
    def register_loggers(register):
        register(JsonLines)


    @adaptool.hookimpl
    def register_callbacks(register):
        register(StopAt)
    """
)


@pytest.mark.parametrize(("stop_at", "early"), [(3, "stop-at: step 3"), (8, None)])
def test_a_plugin_package_adds_a_logger_and_a_callback(
    tmp_path, tiny_bloom_dir, monkeypatch, stop_at, early
):
    import json

    site = install_fake_plugin(
        tmp_path / "site", distribution="adaptool-tracker", module="tracker", source=TRACKER
    )
    monkeypatch.syspath_prepend(str(site))
    plugins = load_plugins(strict=True, disabled=[])
    assert plugins.plugins["tracker"].registers == {
        "logger": ["jsonlines"],
        "callback": ["stop-at"],
    }
    use_plugins(plugins)
    path = method_recipe(tmp_path, tiny_bloom_dir, "lora", LORA, steps=8)
    path.write_text(
        path.read_text()
        + f'\n[logging]\nto = ["jsonlines"]\n[callbacks.stop-at]\nstep = {stop_at}\n'
    )
    result = train(load_recipe(path))
    # a stop asked at the last step is no early stop
    assert result.step == stop_at and result.stopped_early == early
    tracked = (result.output_dir / "tracked.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in tracked] == records(result.output_dir)
    assert result.manifest.training["loggers"] == ["jsonlines"]


def test_mlflow_gets_the_recipe_and_every_metric_and_a_resumed_run_continues_it(
    tmp_path, tiny_bloom_dir, plugins, monkeypatch
):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # a local store, for the test
    store = f"file:{tmp_path / 'mlruns'}"
    path = method_recipe(tmp_path, tiny_bloom_dir, "lora", LORA, steps=8)
    text = path.read_text().replace("save_steps = 0", "save_steps = 4")
    path.write_text(
        text + f'\n[logging]\nto = ["mlflow"]\n[logging.mlflow]\ntracking_uri = "{store}"\n'
    )
    recipe = load_recipe(path)
    assert train(recipe, reporter=InterruptAt(6)).interrupted
    out = train(recipe, resume=True).output_dir
    client = MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name("adaptool")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1  # the resumed run continued the interrupted one's MLflow run
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.params["peft.method"] == "lora"
    for key in ("loss", "lr", "grad_norm", "eval_loss"):
        history = {}
        for metric in client.get_metric_history(run.info.run_id, key):
            history[metric.step] = metric.value  # the last value logged at a step stands
        expected = {r["step"]: r[key] for r in records(out) if key in r}
        assert history.keys() == expected.keys()
        assert list(history.values()) == pytest.approx(list(expected.values()), rel=1e-6)
