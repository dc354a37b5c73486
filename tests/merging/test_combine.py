"""Combining adapters with peft's add_weighted_adapter."""

from __future__ import annotations

import json

import pytest

from adaptool import AdapterError, AdaptoolError
from adaptool.merging.merge import merge
from tests.helpers import (
    trained,
    weight_deltas,
)


def test_cat_with_weights_one_zero_reproduces_the_first_adapter(
    tmp_path, tiny_bloom_dir, registry, two_adapters
):
    from adaptool.merging.combine import combine

    a, b = two_adapters
    result = combine(
        [a, b],
        output=tmp_path / "cat10",
        weights=[1.0, 0.0],
        combination="cat",
        full=True,
        dtype="fp32",
    )
    single = merge(a, output=tmp_path / "only-a", dtype="fp32")
    combined, first = (
        weight_deltas(result.output_dir, tiny_bloom_dir),
        weight_deltas(single.output_dir, tiny_bloom_dir),
    )
    assert max((combined[k] - first[k]).abs().max().item() for k in first) <= 1e-6
    manifest = json.loads((result.output_dir / "adaptool.json").read_text())
    parents = manifest["adapter"]["manifest"]["combined"]["parents"]
    assert [p["path"] for p in parents] == [str(a), str(b)]


def test_cat_with_half_weights_averages_the_weight_deltas(
    tmp_path, tiny_bloom_dir, registry, two_adapters
):
    from adaptool.merging.combine import combine

    a, b = two_adapters
    combine([a, b], output=tmp_path / "avg", weights=[0.5, 0.5], combination="cat")
    adapter_manifest = json.loads((tmp_path / "avg" / "adaptool.json").read_text())
    assert adapter_manifest["combined"]["weights"] == [0.5, 0.5]
    avg = merge(tmp_path / "avg", output=tmp_path / "avg-m", dtype="fp32")
    da = weight_deltas(merge(a, output=tmp_path / "ma", dtype="fp32").output_dir, tiny_bloom_dir)
    db = weight_deltas(merge(b, output=tmp_path / "mb", dtype="fp32").output_dir, tiny_bloom_dir)
    d = weight_deltas(avg.output_dir, tiny_bloom_dir)
    assert max((d[k] - 0.5 * (da[k] + db[k])).abs().max().item() for k in d) <= 1e-6
    assert max(da[k].abs().max().item() for k in da) > 1e-3  # the adapters do something


def test_combining_refuses_adapters_of_different_bases(tmp_path, tiny_bloom_dir, registry):
    from transformers import AutoTokenizer

    from adaptool.merging.combine import combine
    from adaptool.testing import make_tiny_bloom

    a = trained(tmp_path, tiny_bloom_dir, name="a")
    other = tmp_path / "other-base"
    make_tiny_bloom(other, AutoTokenizer.from_pretrained(str(tiny_bloom_dir)), seed=3)
    b = trained(tmp_path, other, name="b")
    with pytest.raises(AdapterError, match="different bases"):
        combine([a, b], output=tmp_path / "c")
    with pytest.raises(AdaptoolError, match="needs density="):
        combine([a, a], output=tmp_path / "c", combination="ties")
