"""The typed choices of merge and combine: choice() with its error, which combinations need a
density, and the verification tolerance per dtype."""

from __future__ import annotations

import pytest

from adaptool.errors import AdaptoolError
from adaptool.merging.options import TOLERANCE, Combination, Dtype, Into, choice


@pytest.mark.parametrize(
    ("enum", "value", "member"),
    [
        (Dtype, "bf16", Dtype.BF16),
        (Dtype, "auto", Dtype.AUTO),
        (Into, "dequantized", Into.DEQUANTIZED),
        (Combination, "dare_ties", Combination.DARE_TIES),
        (Combination, Combination.SVD, Combination.SVD),
    ],
)
def test_choice_returns_the_member(enum, value, member):
    got = choice(enum, value, "x")
    assert got is member
    assert isinstance(got, enum)


def test_a_bad_choice_names_the_parameter_and_lists_the_choices():
    with pytest.raises(AdaptoolError) as exc:
        choice(Dtype, "int8", "dtype")
    assert str(exc.value) == "dtype='int8' is not one of auto, bf16, fp16, fp32."
    assert exc.value.render({"dtype": "--dtype"}) == "--dtype is not one of auto, bf16, fp16, fp32."


def test_a_bad_choice_of_another_type_is_the_same_error():
    with pytest.raises(AdaptoolError) as exc:
        choice(Into, 3, "into")
    assert str(exc.value) == "into=3 is not one of dequantized, original."


def test_choice_is_case_sensitive():
    with pytest.raises(AdaptoolError):
        choice(Dtype, "BF16", "dtype")


def test_needs_density_exactly_for_ties_dare_and_magnitude_prune():
    needing = {c for c in Combination if c.needs_density}
    assert needing == {
        c for c in Combination if c.value.startswith(("ties", "dare_", "magnitude_prune"))
    }
    assert needing == {
        Combination.TIES,
        Combination.TIES_SVD,
        Combination.DARE_LINEAR,
        Combination.DARE_TIES,
        Combination.DARE_LINEAR_SVD,
        Combination.DARE_TIES_SVD,
        Combination.MAGNITUDE_PRUNE,
        Combination.MAGNITUDE_PRUNE_SVD,
    }
    for plain in (Combination.LINEAR, Combination.CAT, Combination.SVD):
        assert not plain.needs_density


def test_tolerance_has_every_dtype_but_auto_and_is_tightest_for_fp32():
    assert set(TOLERANCE) == set(Dtype) - {Dtype.AUTO}
    assert all(t > 0 for t in TOLERANCE.values())
    assert TOLERANCE[Dtype.FP32] < TOLERANCE[Dtype.FP16] < TOLERANCE[Dtype.BF16]
    assert TOLERANCE["fp32"] == TOLERANCE[Dtype.FP32]  # a StrEnum key is its string
