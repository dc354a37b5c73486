"""generate and eval on an adapter trained in the test (tiny BLOOM, real peft, real training)."""

from __future__ import annotations

from adaptool.artifacts.loading import open_target
from adaptool.generate import build_prompts, generate
from tests.helpers import (
    QUOTES,
)


def test_batched_generation_equals_one_by_one(adapter_dir, registry):
    target = open_target(adapter_dir)
    prompts = build_prompts(QUOTES, target.formatter, target.tokenizer, raw=False)
    batched = generate(target.model, target.tokenizer, prompts, max_new_tokens=12, batch_size=5)
    single = [generate(target.model, target.tokenizer, [p], max_new_tokens=12)[0] for p in prompts]
    assert [g.output for g in batched] == [g.output for g in single]
    assert [g.tokens for g in batched] == [g.tokens for g in single]
    assert all(g.prompt.endswith(" ->: ") for g in batched)


def test_generation_stops_at_eos_and_counts_tokens(adapter_dir, registry):
    target = open_target(adapter_dir)
    [result] = generate(
        target.model,
        target.tokenizer,
        ["“Knowledge is power.” ->: "],
        max_new_tokens=40,
        formatter=target.formatter,
    )
    assert result.tokens <= 40
    if result.stopped:
        assert "</s>" not in result.output
    assert result.parsed == target.formatter.parse(result.output)
