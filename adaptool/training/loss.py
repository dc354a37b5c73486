"""The training loss: summed cross-entropy over the trained next tokens.

A causal LM's head turns every position's hidden state into logits over the whole vocabulary,
which on a real base is the largest tensor of the step (bloom-7b1: 250,880 floats a token,
kept in three copies for the backward). :func:`loss_sum` with a ``head`` never builds them:
the model runs with its head standing aside (the hidden states it would have read are kept),
and :func:`head_loss` takes the loss on the trained positions only (never the prompt or the
padding), chunk by chunk, working out each chunk's gradient as it goes — so no chunk's logits
outlive it. Where a model does anything to the logits after its head (Gemma's soft-capping,
Cohere's scale), :func:`head_for_loss` finds that out and the loss takes the full logits."""

from __future__ import annotations

import functools
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from adaptool.encoding import IGNORE_INDEX

if TYPE_CHECKING:
    from collections.abc import Iterator

#: logits held at once (fp32 elements) while the loss is taken chunk by chunk: 64 MB
CHUNK_ELEMENTS = 1 << 24
#: the fewest rows a chunk of a very wide head takes (a thin matmul wastes the machine)
MIN_CHUNK_ROWS = 64


def loss_sum(model: Any, batch: dict[str, Any], *, head: Any = None) -> Any:
    """Summed cross-entropy over the trained (label != IGNORE_INDEX) next tokens. ``head``
    (the model's output layer, from :func:`head_for_loss`): the loss is taken on the hidden
    states in chunks, without full-vocabulary logits; None: from the model's logits."""
    import torch.nn.functional as F

    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
    if "position_ids" in batch:  # a packed batch: transformers reads rows only without a cache
        inputs["use_cache"] = False
    labels = batch["labels"][:, 1:]
    width = batch["input_ids"].shape[1]
    if head is not None:
        with standing_aside(head) as seen:
            out = model(**inputs)
        if out.logits is not seen["standin"]:  # head_for_loss checked this model does not
            raise RuntimeError("the model changed its logits after the head")
        # prompt tuning and P-tuning put virtual tokens first: the inputs' are the last ones
        hidden = seen["hidden"][:, -width:-1]
        trained = labels != IGNORE_INDEX
        return head_loss(hidden[trained], head.weight, head.bias, labels[trained])
    logits = model(**inputs).logits
    logits = logits[:, -width:-1].float()
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )


@contextmanager
def standing_aside(head: Any) -> Iterator[dict[str, Any]]:
    """While inside, ``head`` computes nothing: it keeps the hidden states it is given
    (``seen["hidden"]``) and returns a stand-in of the logits' shape that holds no memory
    (``seen["standin"]``: the model's ``logits`` are that very tensor when the model does
    nothing more with them)."""
    import torch

    seen: dict[str, Any] = {}

    def keep(hidden: Any) -> Any:
        seen["hidden"] = hidden
        shape = (*hidden.shape[:-1], head.out_features)
        seen["standin"] = torch.zeros((), dtype=hidden.dtype, device=hidden.device).expand(shape)
        return seen["standin"]

    before = head.__dict__.get("forward")  # a forward set on the instance (a hook's), if any
    head.forward = keep
    try:
        yield seen
    finally:
        if before is None:
            del head.forward  # the class's own forward again
        else:
            head.forward = before


def head_for_loss(model: Any) -> Any:
    """The model's output layer when the loss can be taken on it in chunks: a plain linear
    layer (not one a PEFT method adapts or a quantizer replaced), whose output the model
    returns untouched — checked by running two tokens with the head standing aside. None:
    the loss takes the model's logits."""
    import torch

    head = model.get_output_embeddings()
    # an fp16 head: the gradients worked out in the forward would be cast to fp16 before the
    # loss scale (GradScaler's) reaches them, and small probabilities would flush to zero
    if type(head) is not torch.nn.Linear or head.weight.dtype == torch.float16:
        return None
    sample = torch.zeros((1, 2), dtype=torch.long, device=head.weight.device)
    with torch.no_grad(), torch.random.fork_rng(), standing_aside(head) as seen:
        out = model(input_ids=sample)
    return head if out.logits is seen["standin"] else None


def _chunk_rows(vocab: int) -> int:
    return max(MIN_CHUNK_ROWS, CHUNK_ELEMENTS // max(vocab, 1))


def head_loss(hidden: Any, weight: Any, bias: Any, labels: Any) -> Any:
    """Summed cross-entropy of ``hidden @ weight.T + bias`` against ``labels``, a chunk of
    rows at a time. The forward pass also works out the gradients (softmax minus one-hot,
    through the head), so the backward only scales them, and each chunk's logits are freed
    as soon as it is done. Numerically the head's matmul, the fp32 log-softmax and the casts
    are those of the full-logits loss."""
    import torch

    if not torch.is_grad_enabled():  # evaluation: the loss alone, no gradients worked out
        plain = [None if t is None else t.detach() for t in (hidden, weight, bias)]
        return _head_loss_function().apply(*plain, labels)
    return _head_loss_function().apply(hidden, weight, bias, labels)


@functools.cache
def _head_loss_function() -> Any:
    """The autograd function behind :func:`head_loss` (built on first use: torch is
    imported lazily)."""
    import torch
    import torch.nn.functional as F

    class HeadLoss(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, hidden: Any, weight: Any, bias: Any, labels: Any) -> Any:
            need_h, need_w, need_b = ctx.needs_input_grad[:3]
            rows = _chunk_rows(weight.shape[0])
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            grad_h = torch.empty_like(hidden) if need_h else None
            grad_w = torch.zeros_like(weight, dtype=torch.float32) if need_w else None
            grad_b = torch.zeros_like(bias, dtype=torch.float32) if need_b else None
            for start in range(0, hidden.shape[0], rows):
                h, y = hidden[start : start + rows], labels[start : start + rows]
                logits = F.linear(h, weight, bias).float()
                lse = torch.logsumexp(logits, dim=-1)
                total += (lse - logits.gather(1, y[:, None]).squeeze(1)).sum()
                if not (need_h or need_w or need_b):
                    continue
                # d loss / d logits = softmax - one-hot, cast as the logits' backward casts it
                grad = logits.sub_(lse[:, None]).exp_()
                grad[torch.arange(len(y), device=grad.device), y] -= 1
                grad = grad.to(h.dtype)
                if need_h:
                    grad_h[start : start + rows] = grad @ weight
                if need_w:
                    grad_w += (grad.t() @ h).float()
                if need_b:
                    grad_b += grad.float().sum(0)
            ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
            ctx.save_for_backward(grad_h, grad_w, grad_b)
            return total

        @staticmethod
        def backward(ctx: Any, grad_total: Any) -> Any:
            grads = [
                None if grad is None else (grad * grad_total).to(dtype)
                for grad, dtype in zip(ctx.saved_tensors, ctx.dtypes, strict=True)
            ]
            return (*grads, None)

    return HeadLoss
