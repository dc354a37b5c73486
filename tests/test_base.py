"""The plugin base classes: Formatter.score's default (exact match, stopped at EOS), the
defaults of Plugin and Quantizer, and Options (unknown keys and wrong types refused)."""

from __future__ import annotations

from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from pydantic import ValidationError

from adaptool.base import (
    ChatTemplateFormatter,
    Example,
    Formatter,
    Options,
    Plugin,
    Quantizer,
    RunInfo,
    TrainingContext,
)
from adaptool.generate import Generation

EOS_TOKENIZER = SimpleNamespace(eos_token="</s>")
NO_EOS_TOKENIZER = SimpleNamespace(eos_token=None)


class Answer(Formatter):
    """Prompt: the question; completion: the answer column (as written in the row)."""

    name = "answer"

    def columns(self) -> list[str]:
        return ["question", "answer"]

    def format(self, row: Mapping[str, Any], tokenizer: Any) -> Example:
        return Example(row["question"], row["answer"])


def gen(output: str, *, stopped: bool = True) -> Generation:
    return Generation(prompt="q", output=output, tokens=3, stopped=stopped, seconds=0.1)


# -- Formatter.score -----------------------------------------------------------------------------


def test_score_counts_exact_matches_with_eos_stripped_from_the_reference():
    rows = [
        {"question": "a", "answer": "Paris.</s>"},  # EOS written in the data
        {"question": "b", "answer": " 5 "},  # surrounding spaces do not count
        {"question": "c", "answer": "Bonjour."},
        {"question": "d", "answer": "yes"},
    ]
    outputs = [gen("Paris."), gen("5\n"), gen("Bonsoir.", stopped=False), gen("no")]
    scores = Answer().score(rows, outputs, EOS_TOKENIZER)
    assert scores == {"rows": 4, "exact_match": 0.5, "stopped_at_eos": 0.75}


def test_score_strips_eos_only_when_the_tokenizer_has_one():
    rows = [{"question": "a", "answer": "Paris.</s>"}]
    assert Answer().score(rows, [gen("Paris.")], EOS_TOKENIZER)["exact_match"] == 1.0
    assert Answer().score(rows, [gen("Paris.")], NO_EOS_TOKENIZER)["exact_match"] == 0.0
    assert Answer().score(rows, [gen("Paris.</s>")], NO_EOS_TOKENIZER)["exact_match"] == 1.0


def test_score_strips_only_a_trailing_eos():
    rows = [{"question": "a", "answer": "</s>Paris."}]
    assert Answer().score(rows, [gen("Paris.")], EOS_TOKENIZER)["exact_match"] == 0.0


def test_score_of_no_outputs_is_zero_not_a_division_error():
    assert Answer().score([], [], EOS_TOKENIZER) == {
        "rows": 0,
        "exact_match": 0.0,
        "stopped_at_eos": 0.0,
    }


def test_score_refuses_rows_and_outputs_of_different_lengths():
    rows = [{"question": "a", "answer": "x"}, {"question": "b", "answer": "y"}]
    with pytest.raises(ValueError):
        Answer().score(rows, [gen("x")], EOS_TOKENIZER)


def test_formatter_methods_a_plugin_must_write_are_not_implemented_and_parse_is_none():
    bare = Formatter()
    with pytest.raises(NotImplementedError):
        bare.columns()
    with pytest.raises(NotImplementedError):
        bare.format({}, None)
    with pytest.raises(NotImplementedError):
        bare.generation_prompt("x", None)
    assert bare.parse("['a']") is None
    assert Formatter.prompt_has_special_tokens is False


# -- Plugin ----------------------------------------------------------------------------------------


def test_recipe_problems_default_is_none(registry):
    from adaptool.recipe import resolve_plugins, validate_recipe

    recipe = validate_recipe(
        {
            "model": {"name": "org/model"},
            "data": {"source": "org/data", "formatter": "text"},
            "output": {"dir": "/tmp/out"},
        }
    )
    plugins = resolve_plugins(recipe)
    assert Plugin().recipe_problems(recipe, plugins) == []
    assert Answer().recipe_problems(recipe, plugins) == []


def test_a_plugin_without_options_gets_its_schemas_defaults():
    class Shout(Plugin):
        name = "shout"

        class Options(Options):
            level: int = 3

    plugin = Shout()
    assert isinstance(plugin.options, Shout.Options)
    assert plugin.options.level == 3
    given = Shout.Options(level=5)
    assert Shout(given).options is given
    assert Plugin.version == "1"


# -- Quantizer -------------------------------------------------------------------------------------


class Half(Quantizer):
    name = "half"

    class Options(Options):
        bits: int = 16
        mode: str = "fast"

    def from_pretrained_kwargs(self) -> dict[str, Any]:
        return {}


def test_describe_records_the_backend_and_every_option():
    assert Half().describe() == {"backend": "half", "bits": 16, "mode": "fast"}
    assert Half(Half.Options(bits=8)).describe() == {"backend": "half", "bits": 8, "mode": "fast"}


def test_round_trip_default_rounds_to_the_load_dtype_and_returns_float32():
    weight = torch.tensor([1.0 + 2**-10, 0.1, -3.0])
    out = Half().round_trip(weight, dtype=torch.bfloat16)
    assert out.dtype == torch.float32
    assert torch.equal(out, weight.to(torch.bfloat16).float())
    assert out[0].item() == 1.0  # 1 + 2^-10 is not a bfloat16
    same = Half().round_trip(weight, dtype=torch.float32)
    assert torch.equal(same, weight)


def test_quantizer_defaults():
    model = object()
    assert Half().after_load(model) is model
    assert Half().quantized_layers(model) == set()
    assert Quantizer.quantized is True
    with pytest.raises(NotImplementedError):
        Quantizer().from_pretrained_kwargs()


# -- Options ---------------------------------------------------------------------------------------


class Column(Options):
    column: str = "text"
    count: int = 1
    flag: bool = False


def test_options_refuse_unknown_keys():
    with pytest.raises(ValidationError) as exc:
        Column.model_validate({"colum": "x"})
    assert exc.value.errors()[0]["type"] == "extra_forbidden"
    assert exc.value.errors()[0]["loc"] == ("colum",)


@pytest.mark.parametrize(
    ("key", "value"),
    [("column", 3), ("count", "1"), ("count", 1.0), ("flag", "true"), ("flag", 1)],
)
def test_options_are_strict_no_coercion(key, value):
    with pytest.raises(ValidationError):
        Column.model_validate({key: value})


def test_options_accept_the_right_types_and_are_frozen():
    options = Column.model_validate({"column": "quote", "count": 2, "flag": True})
    assert options.model_dump() == {"column": "quote", "count": 2, "flag": True}
    with pytest.raises(ValidationError):
        options.column = "other"


# -- ChatTemplateFormatter ----------------------------------------------------------------------


class Pairs(ChatTemplateFormatter):
    """Rows of ``q`` and ``a``: a two-message conversation."""

    name = "pairs"

    def columns(self):
        return ["q", "a"]

    def messages(self, raw):
        if isinstance(raw, str):
            return [{"role": "user", "content": raw}]
        return [{"role": "user", "content": raw["q"]}, {"role": "assistant", "content": raw["a"]}]


def test_a_chat_template_formatter_only_says_how_rows_become_messages(tokenizer):
    pairs, row = Pairs(), {"q": "Colour?", "a": "Blue."}
    assert pairs.messages(row)[-1] == {"role": "assistant", "content": "Blue."}
    example = pairs.format(row, tokenizer)
    rendered = pairs.render(tokenizer, pairs.messages(row), prompt=False)
    assert example.prompt + example.completion == rendered
    assert example.completion.startswith("Blue.")
    assert pairs.generation_prompt(row, tokenizer) == example.prompt
    assert pairs.generation_prompt("Colour?", tokenizer) == example.prompt


def test_a_chat_template_formatter_refuses_a_conversation_not_ending_with_the_assistant(tokenizer):
    from adaptool.errors import DataError

    class Asking(Pairs):
        def messages(self, raw):
            return super().messages(raw)[:1]

    with pytest.raises(DataError, match="last message of every conversation"):
        Asking().format({"q": "Colour?", "a": "Blue."}, tokenizer)


# -- PeftMethod ---------------------------------------------------------------------------------


def test_common_keys_take_the_recipes_value_else_the_methods_default(registry):
    from adaptool.recipe.schema import PeftSection

    loha = registry.create("peft-method", "loha", {})
    assert loha.common(PeftSection(r=4)) == {
        "alpha": 8.0,  # peft's LoHa default, not adaptool's 16
        "dropout": 0.0,
        "r": 4,
        "target_modules": "auto",
    }
    assert loha.common(PeftSection(alpha=2.0))["alpha"] == 2.0


def wrapped(registry, tiny_bloom_dir, name, run=None, **common):
    from peft import get_peft_model

    from adaptool.recipe.schema import PeftSection
    from tests.helpers import load, make

    options = common.pop("options", {})
    method = registry.create("peft-method", name, options)
    run = run or RunInfo(total_steps=10)
    config = method.peft_config(PeftSection(method=name, **common), run)
    model = get_peft_model(load(tiny_bloom_dir, make(registry, "quantizer", "none")), config)
    return method, model


def test_ia3_after_wrap_saves_an_all_linear_config_peft_loads_back(
    tmp_path, registry, tiny_bloom_dir
):
    from peft import PeftConfig

    method, model = wrapped(registry, tiny_bloom_dir, "ia3", target_modules="all-linear")
    model.save_pretrained(str(tmp_path / "before"))
    with pytest.raises(ValueError, match="feedforward_modules"):  # peft 0.21 refuses its own
        PeftConfig.from_pretrained(str(tmp_path / "before"))
    method.after_wrap(model, RunInfo())
    model.save_pretrained(str(tmp_path / "after"))
    config = PeftConfig.from_pretrained(str(tmp_path / "after"))
    assert set(config.feedforward_modules) <= set(config.target_modules)
    assert {m.rsplit(".", 1)[-1] for m in config.feedforward_modules} == {"dense_4h_to_h"}


def test_adalora_adds_peft_s_orthogonality_term_and_allocates_ranks(registry, tiny_bloom_dir):
    import torch.nn.functional as F

    method, model = wrapped(
        registry,
        tiny_bloom_dir,
        "adalora",
        target_modules=["query_key_value"],
        options={"init_r": 6, "target_r": 2, "tinit": 0, "tfinal": 1},
        run=RunInfo(total_steps=3),
    )
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    out = model(input_ids=ids, labels=ids)  # peft adds the term to the loss it computes
    plain = F.cross_entropy(out.logits[0, :-1], ids[0, 1:])
    term = method.loss_term(model)
    assert term.item() > 0
    torch.testing.assert_close(out.loss, plain + term)
    out.loss.backward()
    for step in range(3):  # the allocation ends at total_step - tfinal = 2
        method.after_optimizer_step(model, step)
    pattern = model.peft_config["default"].rank_pattern
    assert pattern and all(sum(mask) <= 6 for mask in pattern.values())


def test_saved_shapes_are_what_the_method_saves(tmp_path, registry, tiny_bloom_dir):
    from safetensors.torch import load_file

    method, model = wrapped(registry, tiny_bloom_dir, "lora", r=4, target_modules="all-linear")
    model.save_pretrained(str(tmp_path))
    saved = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert method.saved_shapes(model) == {k: tuple(v.shape) for k, v in saved.items()}


def test_only_pissa_and_olora_need_the_initial_state(registry):
    assert registry.create("peft-method", "lora", {"init": "pissa"}).needs_initial_state()
    assert registry.create("peft-method", "lora", {"init": "olora"}).needs_initial_state()
    assert not registry.create("peft-method", "lora", {}).needs_initial_state()
    assert not registry.create("peft-method", "ia3", {}).needs_initial_state()


# -- TrainingContext and the callbacks' hooks ---------------------------------------------------


@pytest.fixture
def context(tmp_path, registry, tiny_bloom_dir, tokenizer):
    from adaptool.data import load_rows
    from adaptool.evaluate import score_rows
    from adaptool.recipe.schema import DataSection
    from tests.helpers import DATA

    method, model = wrapped(registry, tiny_bloom_dir, "lora", r=4)
    calls = []

    def scorer(*args, **kwargs):
        calls.append(args[3])
        return score_rows(*args, **kwargs)

    rows = load_rows(DataSection(source=str(DATA / "quotes.jsonl"), formatter="quote-tags"))
    ctx = TrainingContext(
        output_dir=tmp_path,
        recipe=None,
        total_steps=10,
        model=model,
        tokenizer=tokenizer,
        formatter=registry.create("formatter", "quote-tags", {}),
        method=method,
        eval_rows=rows,
        scorer=scorer,
    )
    ctx.calls = calls
    return ctx


def test_generation_scores_are_the_formatters_computed_once_per_step(context):
    context.model.train()
    scores = context.generation_scores(3, 4)
    assert {"eval_tag_f1", "eval_parses", "eval_stopped_at_eos"} <= set(scores)
    assert "eval_rows" not in scores and context.model.training  # back in training mode
    assert context.generation_scores(3, 4) == scores and len(context.calls) == 1
    context.step = 1
    context.generation_scores(3, 4)
    assert len(context.calls) == 2 and len(context.calls[0]) == 3


def snapshot(model) -> dict:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_save_and_load_trainable_put_the_adapter_back(tmp_path, context):
    before = snapshot(context.model)
    context.save_trainable(tmp_path / "kept")
    with torch.no_grad():
        for p in context.model.parameters():
            if p.requires_grad:
                p.add_(1.0)
    context.load_trainable(tmp_path / "kept")
    after = snapshot(context.model)
    assert all(torch.equal(before[n], after[n]) for n in before)


def test_early_stopping_counts_evaluations_without_improvement(context):
    from adaptool.builtin.callbacks import EarlyStopping

    early = EarlyStopping(EarlyStopping.Options(patience=2))
    for step, loss in enumerate([3.0, 2.0, 2.5, 2.1], 1):
        context.step = step
        assert early.on_eval(context, {"step": step, "eval_loss": loss}) == {}
    assert context.stop_reason and "best 2 at step 2" in context.stop_reason
    assert early.on_end(context) == {"metric": "eval_loss", "best": 2.0, "best_step": 2}
    resumed = EarlyStopping(EarlyStopping.Options(patience=2))
    resumed.load_state_dict(early.state_dict())
    assert (resumed.best, resumed.best_step, resumed.waited) == (2.0, 2, 2)


def test_best_checkpoint_keeps_the_best_and_drops_the_rest_once_a_checkpoint_names_it(context):
    from adaptool.builtin.callbacks import BestCheckpoint, best_dir

    best, states = BestCheckpoint(BestCheckpoint.Options()), {}
    for step, loss in enumerate([3.0, 2.0, 2.5], 1):
        context.step = step
        with torch.no_grad():
            next(p for p in context.model.parameters() if p.requires_grad).add_(0.1)
        states[step] = snapshot(context.model)
        best.on_eval(context, {"step": step, "eval_loss": loss})
    assert best_dir(context.output_dir, 1).is_dir() and best_dir(context.output_dir, 2).is_dir()
    best.on_save(context, context.output_dir / "checkpoints" / "step-0000003")
    assert not best_dir(context.output_dir, 1).exists() and best_dir(context.output_dir, 2).is_dir()
    assert best.on_end(context)["shipped_step"] == 2
    now = snapshot(context.model)  # the model is put back to step 2's weights
    assert all(torch.equal(now[n], states[2][n]) for n in now)
    assert not all(torch.equal(now[n], states[3][n]) for n in now)


def test_early_stopping_on_a_metric_that_is_never_finite_stops_with_a_message(context):
    from adaptool.builtin.callbacks import EarlyStopping

    early = EarlyStopping(EarlyStopping.Options(patience=2))
    for step in (1, 2):
        context.step = step
        early.on_eval(context, {"step": step, "eval_loss": float("nan")})
    assert "no finite value yet" in context.stop_reason


def test_a_methods_checkpoint_state_goes_back_into_a_fresh_model(
    tmp_path, registry, tiny_bloom_dir
):
    """AdaLoRA's: the full-size matrices (not cut to the rank pattern), the rank pattern and
    the importance scores, into a freshly wrapped model."""
    options = {"init_r": 6, "target_r": 2, "tinit": 0, "tfinal": 1}
    kw = {"target_modules": ["query_key_value"], "options": options, "run": RunInfo(total_steps=3)}
    method, model = wrapped(registry, tiny_bloom_dir, "adalora", **kw)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    model(input_ids=ids, labels=ids).loss.backward()
    for step in range(3):
        method.after_optimizer_step(model, step)
    method.save_checkpoint(model, tmp_path)
    _, fresh = wrapped(registry, tiny_bloom_dir, "adalora", **kw)
    method.load_checkpoint(fresh, tmp_path)
    assert fresh.peft_config["default"].rank_pattern == model.peft_config["default"].rank_pattern
    before, after = snapshot(model), snapshot(fresh)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    scores = model.base_model.rankallocator.exp_avg_ipt
    restored = fresh.base_model.rankallocator.exp_avg_ipt
    assert scores.keys() == restored.keys() and all(
        torch.equal(scores[k], restored[k]) for k in scores
    )


def test_peft_types_compare_in_one_spelling_however_they_were_written():
    from peft import PeftType

    from adaptool.base import peft_type_name

    spellings = ["LORA", "lora", "PeftType.LORA", PeftType.LORA]
    assert {peft_type_name(s) for s in spellings} == {"LORA"}
    assert peft_type_name(PeftType.PREFIX_TUNING) == "PREFIX_TUNING"
    assert peft_type_name(None) == "" and peft_type_name("") == ""
