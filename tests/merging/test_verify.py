"""Merge verification: a wrong merge is caught; prompts recorded at training."""

from __future__ import annotations

import pytest

from adaptool.errors import MergeVerificationError
from adaptool.merging.merge import merge
from tests.helpers import (
    trained,
)


def test_verification_catches_a_corrupted_merge(tmp_path, tiny_bloom_dir, registry, monkeypatch):
    from adaptool.builtin.peft_methods import Lora

    adapter = trained(tmp_path, tiny_bloom_dir)
    real_fold = Lora.fold

    def tampered(self, layer):
        weight, bias = real_fold(self, layer)
        weight[0, :4] += 0.5  # one tensor, slightly wrong
        return weight, bias

    monkeypatch.setattr(Lora, "fold", tampered)
    with pytest.raises(MergeVerificationError, match="the merge is wrong"):
        merge(adapter, output=tmp_path / "bad", dtype="fp32")
    assert not (tmp_path / "bad").exists() and not (tmp_path / ".bad.tmp").exists()


def test_an_adapter_trained_on_a_bf16_base_verifies_in_fp32(tmp_path, tiny_bloom_dir, registry):
    adapter = trained(tmp_path, tiny_bloom_dir, extra=('model.dtype="bfloat16"',))
    result = merge(adapter, output=tmp_path / "m", dtype="fp32")
    assert result.verification["reference"]["max_abs_logit_diff"] <= 1e-4


def test_verification_runs_the_samples_recorded_at_training(tmp_path, tiny_bloom_dir, plugins):
    """merge verifies on training examples the manifest recorded, as formatted then; it never
    reloads the training data (here deleted after training)."""
    import shutil

    from adaptool.artifacts.artifact import Artifact
    from adaptool.data import load_file
    from adaptool.merging.verify import FALLBACK_PROMPTS, recorded_prompts
    from adaptool.recipe import load_recipe
    from adaptool.training.run import train
    from tests.helpers import DATA, recipe_file

    data = tmp_path / "quotes.jsonl"
    shutil.copy(DATA / "quotes.jsonl", data)
    path = recipe_file(tmp_path, tiny_bloom_dir, steps=2, source=data)
    adapter = train(load_recipe(path, [f"output.dir={tmp_path / 'a'}"])).output_dir
    quote_tags = plugins.registry.get("formatter", "quote-tags")()
    expected = []
    for row in list(load_file(data))[:4]:
        example = quote_tags.format(row, None)
        expected.append(example.prompt + example.completion)
    data.unlink()

    assert recorded_prompts(Artifact.read(adapter)) == expected
    result = merge(adapter, output=tmp_path / "m", dtype="fp32")
    assert result.verification["prompts"] == 4
    plain = Artifact.read(adapter)
    plain.manifest = None  # a plain peft adapter: fixed sentences
    assert recorded_prompts(plain) == list(FALLBACK_PROMPTS)
