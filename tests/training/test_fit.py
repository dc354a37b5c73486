"""The training loop: the loss on completion tokens, its state in checkpoints."""

from __future__ import annotations

import pytest
import torch


def test_loss_is_taken_on_completion_tokens_only(tokenizer):
    from adaptool.base import Example
    from adaptool.encoding import encode_examples
    from adaptool.testing import make_tiny_bloom
    from adaptool.training.batching import collate
    from adaptool.training.fit import loss_sum as _loss_sum

    model = make_tiny_bloom(None, tokenizer)
    examples = [Example("“Knowledge is power.” ->: ", "['knowledge']"), Example("“Hi” ->: ", "[]")]
    encoded = encode_examples(examples, tokenizer, max_length=64)
    batch = collate(encoded, tokenizer.pad_token_id)
    with torch.no_grad():
        total = _loss_sum(model, batch)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    expected = 0.0
    for row, e in enumerate(encoded):
        n_prompt = e.prompt_tokens
        for pos in range(n_prompt, len(e.input_ids)):  # completion tokens (and EOS) only
            log_probs = torch.log_softmax(logits[row, pos - 1], dim=-1)
            expected -= log_probs[e.input_ids[pos]].item()
    assert total.item() == pytest.approx(expected, rel=1e-5)
