"""The built-in callbacks on real runs whose metric peaks early: early stopping ends the run
once eval loss stops improving; best-checkpoint ships the adapter of the best evaluation, by
eval loss or by the formatter's own metric on held-out generations."""

from __future__ import annotations

import types

import pytest
import torch
from safetensors.torch import load_file

import adaptool
from adaptool.builtin.formatters import QuoteTags
from adaptool.plugins import load_plugins, use_plugins
from adaptool.recipe import load_recipe
from adaptool.training.run import train
from tests.helpers import InterruptAt, method_recipe, records

#: a learning rate high enough that the tiny model overfits the quotes within a few steps
FAST = 'learning_rate = 1e-1\nlr_scheduler = "constant"\neval_steps = 1'


def recipe(tmp_path, base, callbacks: str, *, steps: int, formatter: str = "quote-tags"):
    path = method_recipe(
        tmp_path, base, "lora", 'r = 8\ntarget_modules = "all-linear"', steps=steps
    )
    text = path.read_text().replace("learning_rate = 2e-2", FAST)
    text = text.replace('formatter = "quote-tags"', f'formatter = "{formatter}"')
    path.write_text(text + "\n" + callbacks)
    return path


def eval_losses(out) -> dict[int, float]:
    return {r["step"]: r["eval_loss"] for r in records(out) if "eval_loss" in r}


def adapter(out) -> dict[str, torch.Tensor]:
    return load_file(str(out / "adapter_model.safetensors"))


def same(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_early_stopping_ends_the_run_when_eval_loss_stops_improving(
    tmp_path, tiny_bloom_dir, plugins
):
    callbacks = "[callbacks.early-stopping]\npatience = 2"
    result = train(load_recipe(recipe(tmp_path, tiny_bloom_dir, callbacks, steps=40)))
    losses = eval_losses(result.output_dir)
    best_step = min(losses, key=losses.get)
    assert result.stopped_early and "early stopping" in result.stopped_early
    assert best_step < result.step < 40  # the metric peaked early, and the run stopped
    after = [s for s in losses if s > best_step]
    assert after == [best_step + 1, best_step + 2] == [result.step - 1, result.step]
    assert all(losses[s] >= losses[best_step] for s in after)
    manifest = result.manifest
    assert manifest.training["stopped_early"] == result.stopped_early
    assert manifest.training["callbacks"]["early-stopping"]["best_step"] == best_step
    assert (result.output_dir / "adaptool.json").is_file()


def test_best_checkpoint_ships_the_adapter_of_the_lowest_eval_loss(
    tmp_path, tiny_bloom_dir, plugins
):
    callbacks = '[callbacks.best-checkpoint]\nmetric = "eval_loss"'
    path = recipe(tmp_path, tiny_bloom_dir, callbacks, steps=12)
    result = train(load_recipe(path, [f"output.dir={tmp_path / 'best'}"]))
    losses = eval_losses(result.output_dir)
    best_step = min(losses, key=losses.get)
    assert best_step < 12, f"the eval loss did not peak early: {losses}"
    assert result.shipped_step == best_step == result.manifest.training["shipped_step"]
    assert result.eval_loss == losses[best_step]
    # the shipped adapter is the one a run stopped at that step makes (same data, same rate)
    short = train(
        load_recipe(path, [f"output.dir={tmp_path / 'short'}", f"training.max_steps={best_step}"])
    )
    assert same(adapter(result.output_dir), adapter(short.output_dir))
    assert not same(adapter(result.output_dir), adapter_at_end(tmp_path, path))


def adapter_at_end(tmp_path, path):
    """The adapter of the same run without the callback: the last step's."""
    text = path.read_text().split("[callbacks.")[0]
    plain = tmp_path / "plain.toml"
    plain.write_text(text)
    return adapter(train(load_recipe(plain, [f"output.dir={tmp_path / 'plain'}"])).output_dir)


class PeakedTags(QuoteTags):
    """The quote-tags formatter with one more score, ``peak``, that is highest at the second
    evaluation: a formatter metric that peaks early, whatever the tiny model generates."""

    name = "peaked-tags"
    SCHEDULE = (0.2, 0.9, 0.5, 0.4, 0.3, 0.1)

    def score(self, rows, outputs, tokenizer):
        calls = PeakedTags.calls = getattr(PeakedTags, "calls", -1) + 1
        return super().score(rows, outputs, tokenizer) | {"peak": self.SCHEDULE[calls]}


@pytest.fixture
def peaked_plugins():
    module = types.ModuleType("peaked_plugin")

    @adaptool.hookimpl
    def register_formatters(register):
        register(PeakedTags)

    module.register_formatters = register_formatters
    PeakedTags.calls = -1
    plugins = load_plugins(entry_points=False, strict=True, disabled=[], extra=[module])
    use_plugins(plugins)
    return plugins


def test_best_checkpoint_by_the_formatters_metric_on_heldout_generations(
    tmp_path, tiny_bloom_dir, peaked_plugins
):
    callbacks = '[callbacks.best-checkpoint]\nmetric = "peak"\nrows = 4\nmax_new_tokens = 8'
    path = recipe(tmp_path, tiny_bloom_dir, callbacks, steps=6, formatter="peaked-tags")
    result = train(load_recipe(path, [f"output.dir={tmp_path / 'best'}"]))
    logged = [r for r in records(result.output_dir) if "eval_peak" in r]
    assert [r["eval_peak"] for r in logged] == list(PeakedTags.SCHEDULE)
    assert all("eval_tag_f1" in r and "eval_parses" in r for r in logged)  # real scores too
    assert result.shipped_step == 2
    PeakedTags.calls = -1  # the short run scores its two evaluations too
    short = train(load_recipe(path, [f"output.dir={tmp_path / 'short'}", "training.max_steps=2"]))
    assert same(adapter(result.output_dir), adapter(short.output_dir))


def test_an_interrupted_run_keeps_its_best_across_resume(tmp_path, tiny_bloom_dir, plugins):
    callbacks = "[callbacks.best-checkpoint]\n[callbacks.early-stopping]\npatience = 3"
    path = recipe(tmp_path, tiny_bloom_dir, callbacks, steps=14)
    path.write_text(path.read_text().replace("save_steps = 0", "save_steps = 2"))
    whole = train(load_recipe(path, [f"output.dir={tmp_path / 'a'}"]))
    run = load_recipe(path, [f"output.dir={tmp_path / 'b'}"])
    first = train(run, reporter=InterruptAt(5))
    assert first.interrupted
    resumed = train(run, resume=True)
    assert (resumed.step, resumed.shipped_step) == (whole.step, whole.shipped_step)
    assert resumed.stopped_early == whole.stopped_early
    assert same(adapter(whole.output_dir), adapter(resumed.output_dir))


def test_a_callback_that_needs_heldout_rows_is_refused_without_them(
    tmp_path, tiny_bloom_dir, plugins
):
    from adaptool.errors import RecipeError

    path = recipe(tmp_path, tiny_bloom_dir, "[callbacks.early-stopping]", steps=4)
    path.write_text(path.read_text().replace("eval_fraction = 0.2", "eval_fraction = 0.0"))
    with pytest.raises(RecipeError, match=r"set data\.eval_fraction"):
        load_recipe(path)


def test_an_unknown_callback_or_option_is_a_recipe_problem(tmp_path, tiny_bloom_dir, plugins):
    from adaptool.errors import RecipeError

    path = recipe(tmp_path, tiny_bloom_dir, "[callbacks.early-stoping]\n", steps=4)
    with pytest.raises(RecipeError, match="Did you mean 'early-stopping'"):
        load_recipe(path)
    path = recipe(tmp_path, tiny_bloom_dir, "[callbacks.early-stopping]\npatience = 0\n", steps=4)
    with pytest.raises(RecipeError, match=r"callbacks\.early-stopping\.patience"):
        load_recipe(path)
