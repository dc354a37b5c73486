"""The choices merge and combine take (typed, so the command line lists and checks them)."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from adaptool.errors import AdaptoolError, param


class Dtype(StrEnum):
    """The merged model's dtype; ``auto`` keeps the dtype the adapter was trained in (else the
    base's own)."""

    AUTO = "auto"
    BF16 = "bf16"
    FP16 = "fp16"
    FP32 = "fp32"


class Into(StrEnum):
    """For an adapter trained on a quantized base: the weights it is folded into."""

    DEQUANTIZED = "dequantized"
    ORIGINAL = "original"


class Combination(StrEnum):
    """peft's ``add_weighted_adapter`` combination types."""

    LINEAR = "linear"
    CAT = "cat"
    SVD = "svd"
    TIES = "ties"
    TIES_SVD = "ties_svd"
    DARE_LINEAR = "dare_linear"
    DARE_TIES = "dare_ties"
    DARE_LINEAR_SVD = "dare_linear_svd"
    DARE_TIES_SVD = "dare_ties_svd"
    MAGNITUDE_PRUNE = "magnitude_prune"
    MAGNITUDE_PRUNE_SVD = "magnitude_prune_svd"

    @property
    def needs_density(self) -> bool:
        """Whether it keeps only a share (``density``) of each weight delta."""
        return self not in (Combination.LINEAR, Combination.CAT, Combination.SVD)


#: max |Δ logits| between the merged model and the adapter unmerged on the same weights, by
#: output dtype (the merged weights are rounded to it; the rest is float32 arithmetic)
TOLERANCE = {Dtype.FP32: 1e-4, Dtype.BF16: 0.25, Dtype.FP16: 5e-2}


def choice(enum: type[StrEnum], value: Any, name: str) -> Any:
    """``value`` as a member of ``enum``; anything else is an error naming parameter ``name``
    and the choices."""
    try:
        return enum(value)
    except ValueError:
        choices = ", ".join(str(m) for m in enum)
        raise AdaptoolError(f"{param(name, repr(value))} is not one of {choices}.") from None
