"""Output dirs: which are adaptool's (its marker or manifest), what overwrite may replace."""

from __future__ import annotations

import pytest

from adaptool import AdaptoolError
from adaptool.artifacts.outputs import check_output, is_ours, mark
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


def _looks_like_a_run(folder):
    """A folder of someone else's that holds what adaptool's outputs hold, and their work."""
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "metrics.jsonl").write_text('{"step": 1}\n')
    (folder / "model.safetensors").write_bytes(b"not ours")
    (folder / "thesis.tex").write_text("three years of work")
    return folder


def test_overwrite_replaces_only_what_adaptools_marker_or_manifest_identifies(
    tmp_path, tiny_bloom_dir, plugins
):
    from adaptool.recipe import load_recipe
    from adaptool.training.run import train
    from tests.helpers import recipe_file

    adapter = trained(tmp_path, tiny_bloom_dir)
    assert (adapter / ".adaptool").is_file() and is_ours(adapter)
    theirs = _looks_like_a_run(tmp_path / "theirs")
    assert not is_ours(theirs)
    recipe = load_recipe(recipe_file(tmp_path, tiny_bloom_dir, steps=1))
    with pytest.raises(AdaptoolError, match="does not look like something adaptool wrote"):
        train(recipe, output_dir=theirs, overwrite=True)
    with pytest.raises(AdaptoolError, match="does not look like something adaptool wrote"):
        merge(adapter, output=theirs, overwrite=True)
    assert (theirs / "thesis.tex").read_text() == "three years of work"

    merged = merge(adapter, output=tmp_path / "m", dtype="fp32").output_dir
    assert (merged / ".adaptool").is_file()
    again = merge(adapter, output=merged, dtype="fp32", overwrite=True)
    assert again.output_dir == merged
    # an interrupted run (marker, checkpoints, no manifest yet) is adaptool's to replace
    (adapter / "adaptool.json").unlink()
    assert is_ours(adapter)
    train(recipe, output_dir=adapter, overwrite=True)


def test_check_output_refusals(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(AdaptoolError, match="is a file"):
        check_output(a_file, overwrite=True)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(AdaptoolError, match=r"overwrite=True to replace it"):
        check_output(tmp_path / "full", overwrite=False)
    check_output(tmp_path / "empty-or-new", overwrite=False)
    mark(tmp_path / "full", "train")
    check_output(tmp_path / "full", overwrite=True)
