"""Batches: padding that changes no row's loss."""

from __future__ import annotations

import pytest
import torch


def test_padding_to_a_multiple_changes_no_row_s_loss(tokenizer, monkeypatch):
    from adaptool.base import Example
    from adaptool.encoding import encode_examples
    from adaptool.testing import make_tiny_bloom
    from adaptool.training import batching
    from adaptool.training.fit import loss_sum as _loss_sum

    model = make_tiny_bloom(None, tokenizer).eval()
    examples = [Example("“A” ->: ", "['x', 'y']"), Example("“Be yourself.” ->: ", "[]")]
    encoded = encode_examples(examples, tokenizer, max_length=64)
    longest = max(len(e.input_ids) for e in encoded)
    padded = batching.collate(encoded, tokenizer.pad_token_id)
    assert padded["input_ids"].shape[1] % batching.PAD_MULTIPLE == 0
    assert padded["input_ids"].shape[1] >= longest
    monkeypatch.setattr(batching, "PAD_MULTIPLE", 1)
    exact = batching.collate(encoded, tokenizer.pad_token_id)
    assert exact["input_ids"].shape[1] == longest
    with torch.no_grad():
        assert _loss_sum(model, padded).item() == pytest.approx(_loss_sum(model, exact).item())
