"""Output dirs: what overwrite may replace."""

from __future__ import annotations

import pytest

from adaptool import AdaptoolError
from adaptool.merging.merge import merge
from tests.helpers import (
    trained,
)


def test_merge_never_overwrites_its_input(tmp_path, tiny_bloom_dir, registry):
    adapter = trained(tmp_path, tiny_bloom_dir)
    with pytest.raises(AdaptoolError, match="would replace the input"):
        merge(adapter, output=adapter, overwrite=True)
    with pytest.raises(AdaptoolError, match="would replace the input"):
        merge(adapter, output=tmp_path, overwrite=True)
    assert (adapter / "adapter_model.safetensors").is_file()
