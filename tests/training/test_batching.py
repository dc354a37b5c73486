"""Batches: padding that changes no row's loss."""

from __future__ import annotations

import pytest
import torch


def test_batches_are_padded_to_their_longest_row_and_padding_changes_no_loss(tokenizer):
    from adaptool.base import Example
    from adaptool.encoding import IGNORE_INDEX, encode_examples
    from adaptool.testing import make_tiny_bloom
    from adaptool.training import batching
    from adaptool.training.fit import loss_sum as _loss_sum

    model = make_tiny_bloom(None, tokenizer).eval()
    examples = [Example("“A” ->: ", "['x', 'y']"), Example("“Be yourself.” ->: ", "[]")]
    encoded = encode_examples(examples, tokenizer, max_length=64)
    longest = max(len(e.input_ids) for e in encoded)
    exact = batching.collate(encoded, tokenizer.pad_token_id)
    assert exact["input_ids"].shape[1] == longest  # no wider than the longest row
    assert exact["attention_mask"].sum().item() == sum(len(e.input_ids) for e in encoded)
    # padded wider (as a batch with a longer row would be), every row's loss is the same
    more = {"input_ids": tokenizer.pad_token_id, "attention_mask": 0, "labels": IGNORE_INDEX}
    wider = {k: torch.nn.functional.pad(v, (0, 5), value=more[k]) for k, v in exact.items()}
    with torch.no_grad():
        assert _loss_sum(model, wider).item() == pytest.approx(_loss_sum(model, exact).item())


# -- packing -------------------------------------------------------------------------------------


def _rows(tokenizer):
    from adaptool.base import Example
    from adaptool.encoding import encode_examples

    examples = [
        Example("“Knowledge is power.” ->: ", "['knowledge', 'power']"),
        Example("“A” ->: ", "['x']"),
        Example("“Be yourself; everyone else is already taken.” ->: ", "['be-yourself', 'x']"),
    ]
    return encode_examples(examples, tokenizer, max_length=64)


def _row_losses(model, batch, rows):
    """Summed cross-entropy of each row, read from a packed or a padded batch."""
    import torch.nn.functional as F

    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs, use_cache=False).logits[:, :-1].float()
    losses = F.cross_entropy(
        logits.transpose(1, 2), batch["labels"][:, 1:], ignore_index=-100, reduction="none"
    )
    if batch["input_ids"].shape[0] == len(rows):  # padded: a row per line
        return losses.sum(dim=1).tolist()
    out, start = [], 0
    for row in rows:  # packed: each row's next-token losses are its own span
        out.append(losses[0, start : start + len(row.input_ids) - 1].sum().item())
        start += len(row.input_ids)
    return out


def test_a_packed_batch_gives_each_row_the_loss_it_has_alone(tokenizer):
    """A tiny Llama in fp32: the rows of a packed micro-batch have, each, the loss they have
    unpacked (max |Δ| ≤ 1e-5), and the batch's summed loss is the padded batch's."""
    from adaptool.testing import make_tiny_llama
    from adaptool.training.batching import collate, collate_packed
    from adaptool.training.fit import loss_sum

    model = make_tiny_llama(None, tokenizer).eval()
    rows = _rows(tokenizer)
    packed = collate_packed(rows, tokenizer.pad_token_id)
    assert packed["input_ids"].shape[0] == 1
    assert "attention_mask" not in packed
    with torch.no_grad():
        alone = [_row_losses(model, collate([r], tokenizer.pad_token_id), [r])[0] for r in rows]
        together = _row_losses(model, packed, rows)
        padded = loss_sum(model, collate(rows, tokenizer.pad_token_id)).item()
        assert max(abs(a - b) for a, b in zip(alone, together, strict=True)) <= 1e-5
        assert loss_sum(model, packed).item() == pytest.approx(padded, abs=1e-4)
        assert min(alone) > 0


def test_rows_of_a_packed_batch_do_not_see_each_other(tokenizer):
    """Changing one row changes no other row's loss (the mask is block-diagonal)."""
    from adaptool.encoding import Encoded
    from adaptool.testing import make_tiny_llama
    from adaptool.training.batching import collate_packed

    model = make_tiny_llama(None, tokenizer).eval()
    rows = _rows(tokenizer)
    first = rows[0]
    swapped = Encoded(
        [t + 1 for t in first.input_ids],
        first.labels,
        first.prompt_tokens,
        first.completion_tokens,
        first.truncated,
    )
    with torch.no_grad():
        before = _row_losses(model, collate_packed(rows, 0), rows)
        after = _row_losses(model, collate_packed([swapped, *rows[1:]], 0), [swapped, *rows[1:]])
    assert before[1:] == pytest.approx(after[1:], abs=1e-5)


def _tiny(kind, vocab):
    import transformers as tf

    small = {
        "vocab_size": vocab,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 64,
    }
    return {
        "llama": lambda: tf.LlamaConfig(**small, num_key_value_heads=2),
        "qwen2": lambda: tf.Qwen2Config(**small, num_key_value_heads=2),
        "mistral": lambda: tf.MistralConfig(**small, num_key_value_heads=2),
        "gemma": lambda: tf.GemmaConfig(**small, num_key_value_heads=2, head_dim=8),
        "gpt_neox": lambda: tf.GPTNeoXConfig(**small),
        "gpt2": lambda: tf.GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4),
        "falcon": lambda: tf.FalconConfig(
            vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4
        ),
        "falcon-alibi": lambda: tf.FalconConfig(
            vocab_size=vocab,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            alibi=True,
        ),
        "bloom": lambda: tf.BloomConfig(vocab_size=vocab, hidden_size=32, n_layer=2, n_head=4),
        "opt": lambda: tf.OPTConfig(
            vocab_size=vocab,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            ffn_dim=64,
            word_embed_proj_dim=32,
        ),
    }[kind]()


@pytest.mark.parametrize(
    "kind",
    [
        "llama",
        "qwen2",
        "mistral",
        "gemma",
        "gpt_neox",
        "gpt2",
        "falcon",
        "falcon-alibi",
        "bloom",
        "opt",
    ],
)
def test_packing_is_offered_exactly_where_it_is_exact(kind, tokenizer):
    """packing_refused says yes for the architectures where a packed batch measures the same
    per-row losses, and no (with a reason) where it does not: BLOOM and OPT, which take their
    mask from the attention mask alone. Falcon with ALiBi packs exactly (a row's bias is its
    scores shifted by a constant)."""
    from transformers import AutoModelForCausalLM

    from adaptool.modeling import packing_refused
    from adaptool.training.batching import collate, collate_packed

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(_tiny(kind, len(tokenizer))).eval()
    rows = _rows(tokenizer)
    with torch.no_grad():
        alone = [_row_losses(model, collate([r], 0), [r])[0] for r in rows]
        together = _row_losses(model, collate_packed(rows, 0), rows)
    exact = max(abs(a - b) for a, b in zip(alone, together, strict=True)) <= 1e-4
    refused = packing_refused(model)
    assert (refused is None) == exact, refused
    if refused is not None:
        assert "position" in refused


def test_prompt_learning_adapters_are_never_packed(tokenizer):
    from peft import PromptTuningConfig, get_peft_model

    from adaptool.modeling import packing_refused
    from adaptool.testing import make_tiny_llama

    model = make_tiny_llama(None, tokenizer)
    assert packing_refused(model) is None
    wrapped = get_peft_model(model, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    assert "virtual tokens" in packing_refused(wrapped)


# -- the batch plan ------------------------------------------------------------------------------


@pytest.mark.parametrize("group", [True, False])
def test_every_row_once_an_epoch_in_a_seeded_order(group):
    import random

    from adaptool.training.batching import BatchPlan

    rng = random.Random(1)
    lengths = [rng.randint(1, 90) for _ in range(1003)]
    plan = BatchPlan(lengths, 4, seed=5, group_by_length=group)
    for epoch in (0, 1):
        batches = plan.batches(epoch)
        assert len(batches) == plan.batches_per_epoch == 251
        assert sorted(i for b in batches for i in b) == list(range(1003))
        assert all(1 <= len(b) <= 4 for b in batches)
        assert [plan.batch_at(epoch * 251 + k) for k in range(251)] == batches
    assert plan.batches(0) != plan.batches(1)
    assert BatchPlan(lengths, 4, seed=5, group_by_length=group).batches(0) == plan.batches(0)
    if group:  # rows of a batch have neighbouring lengths: little padding
        padded = sum(4 * max(lengths[i] for i in b) for b in plan.batches(0))
        ungrouped = BatchPlan(lengths, 4, seed=5, group_by_length=False).batches(0)
        assert padded < 0.8 * sum(4 * max(lengths[i] for i in b) for b in ungrouped)
        for b in plan.batches(0):
            assert [lengths[i] for i in b] == sorted((lengths[i] for i in b), reverse=True)


def test_auto_packs_a_batch_when_that_costs_no_more_attention():
    """Rows of mixed lengths are packed (T² ≤ B·L²); rows alike, as grouping makes them, are
    padded; true and false always do one thing."""
    from adaptool.encoding import Encoded
    from adaptool.training.batching import collate_for

    def rows(*lengths):
        return [Encoded(list(range(5, 5 + n)), [-100] * n, 0, n, False) for n in lengths]

    auto = collate_for("auto")
    assert "position_ids" in auto(rows(200, 20, 20, 20), 0)
    assert "position_ids" in auto(rows(100, 10), 0)
    assert "attention_mask" in auto(rows(40, 38, 36, 35), 0)
    assert "position_ids" in collate_for(True)(rows(40, 38, 36, 35), 0)
    assert "attention_mask" in collate_for(False)(rows(200, 20, 20, 20), 0)
