"""Merge verification: a wrong merge is caught; prompts recorded at training."""

from __future__ import annotations

import pytest

from adaptool.errors import MergeVerificationError
from adaptool.merging.merge import merge
from tests.helpers import (
    trained,
)


def test_verification_catches_a_corrupted_merge(tmp_path, tiny_bloom_dir, registry, monkeypatch):
    import adaptool.merging.merge as merging

    adapter = trained(tmp_path, tiny_bloom_dir)
    real_fold = merging.fold

    def tampered(*args):
        weight, bias = real_fold(*args)
        weight[0, :4] += 0.5  # one tensor, slightly wrong
        return weight, bias

    monkeypatch.setattr(merging, "fold", tampered)
    with pytest.raises(MergeVerificationError, match="the merge is wrong"):
        merge(adapter, output=tmp_path / "bad", dtype="fp32")
    assert not (tmp_path / "bad").exists() and not (tmp_path / ".bad.tmp").exists()


def test_an_adapter_trained_on_a_bf16_base_verifies_in_fp32(tmp_path, tiny_bloom_dir, registry):
    adapter = trained(tmp_path, tiny_bloom_dir, extra=('model.dtype="bfloat16"',))
    result = merge(adapter, output=tmp_path / "m", dtype="fp32")
    assert result.verification["reference"]["max_abs_logit_diff"] <= 1e-4
