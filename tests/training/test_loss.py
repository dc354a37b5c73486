"""The loss taken on the LM head in chunks: the same loss and gradients as from the model's
full logits, without holding them; models that change their logits after the head keep the
full-logits loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from adaptool.training.loss import head_for_loss, head_loss, loss_sum


def _batch(vocab: int, *, rows: int = 3, width: int = 16, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (rows, width), generator=generator)
    labels = ids.clone()
    labels[:, :5] = -100  # a prompt
    labels[-1, 11:] = -100  # padding
    mask = torch.ones_like(ids)
    mask[-1, 11:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _lora(model):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", lora_dropout=0.0))


def _grads(model) -> dict[str, torch.Tensor]:
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_chunked_loss_and_its_gradients_are_the_full_logits_ones(tokenizer, dtype):
    from adaptool.testing import make_tiny_bloom

    model = _lora(make_tiny_bloom(None, tokenizer).to(dtype))
    # LoRA's B starts at zero: move it, so every adapter weight has a gradient to compare
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.1)
    head = head_for_loss(model)
    assert head is model.get_output_embeddings()
    batch = _batch(len(tokenizer))
    full = loss_sum(model, batch)
    full.backward()
    expected = _grads(model)
    chunked = loss_sum(model, batch, head=head)
    chunked.backward()
    got = _grads(model)
    tolerance = 1e-5 if dtype == torch.float32 else 1e-2
    assert chunked.item() == pytest.approx(full.item(), rel=tolerance)
    assert got.keys() == expected.keys() and len(got) > 4
    for name, grad in expected.items():
        scale = grad.abs().max().item()
        assert (got[name] - grad).abs().max().item() <= tolerance * scale, name


def test_a_trainable_head_with_a_bias_gets_its_gradients_across_chunks(monkeypatch):
    """A head the method trains (and its bias), over several chunks of rows."""
    import adaptool.training.loss as loss

    monkeypatch.setattr(loss, "CHUNK_ELEMENTS", 50 * 7)  # 7 rows a chunk over a vocab of 50
    monkeypatch.setattr(loss, "MIN_CHUNK_ROWS", 1)
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50)
    hidden = torch.randn(30, 16, requires_grad=True)
    labels = torch.randint(0, 50, (30,))
    expected = F.cross_entropy(head(hidden), labels, reduction="sum")
    (expected * 0.5).backward()
    want = [t.grad.clone() for t in (hidden, head.weight, head.bias)]
    for t in (hidden, head.weight, head.bias):
        t.grad = None
    got = head_loss(hidden, head.weight, head.bias, labels)
    (got * 0.5).backward()
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    for grad, wanted in zip((hidden.grad, head.weight.grad, head.bias.grad), want, strict=True):
        torch.testing.assert_close(grad, wanted, rtol=1e-5, atol=1e-6)


def test_the_chunked_loss_keeps_no_full_vocabulary_logits_for_the_backward(tokenizer):
    """Nothing autograd keeps for the backward is vocabulary-wide (the full-logits loss keeps
    its log-softmax), and what it keeps a token falls by most of the fp32 logits' size."""
    from adaptool.testing import make_tiny_bloom
    from adaptool.training.speed import activation_bytes_per_token

    model = _lora(make_tiny_bloom(None, tokenizer))
    batch = _batch(len(tokenizer), rows=4, width=32)
    head = head_for_loss(model)
    weights = {p.data_ptr() for p in model.parameters()}

    def kept_vocabulary_wide(**kwargs) -> int:
        shapes = []

        def keep(t):
            if t.data_ptr() not in weights:
                shapes.append(tuple(t.shape))
            return t

        with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
            loss_sum(model, batch, **kwargs)
        return sum(1 for shape in shapes if shape and shape[-1] == len(tokenizer))

    assert kept_vocabulary_wide() > 0
    assert kept_vocabulary_wide(head=head) == 0
    full = activation_bytes_per_token(model, batch)
    chunked = activation_bytes_per_token(model, batch, head=head)
    assert full - chunked >= 0.75 * 4 * len(tokenizer)


def test_a_model_that_changes_its_logits_after_the_head_keeps_the_full_logits_loss(tokenizer):
    """Gemma 2 soft-caps its logits after the head: the chunked loss would skip that, so the
    check finds it and the loss is taken on the model's own logits."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    config = Gemma2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        final_logit_softcapping=0.5,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = _lora(Gemma2ForCausalLM(config))
    assert head_for_loss(model) is None
    batch = _batch(len(tokenizer))
    logits = model(input_ids=batch["input_ids"]).logits[:, :-1]
    expected = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(),
        batch["labels"][:, 1:].reshape(-1),
        ignore_index=-100,
        reduction="sum",
    )
    assert loss_sum(model, batch).item() == pytest.approx(expected.item(), rel=1e-5)
