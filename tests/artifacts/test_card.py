"""The model card: metadata and body."""

from __future__ import annotations

import json


def test_model_card_metadata_for_a_hub_base(adapter, tmp_path):
    import shutil

    from adaptool.artifacts.card import model_card

    copy = tmp_path / "copy"
    shutil.copytree(adapter, copy)
    manifest = json.loads((copy / "adaptool.json").read_text())
    manifest["base_model"]["name"] = "bigscience/bloom-7b1"
    manifest["quantization"] = {"backend": "bnb-4bit", "quant_type": "nf4"}
    manifest["data"]["source"] = "Abirate/english_quotes"
    (copy / "adaptool.json").write_text(json.dumps(manifest))
    card = model_card(copy, repo_id="alice/qlora")
    meta = card.split("---")[1]
    assert "base_model: bigscience/bloom-7b1" in meta and "- qlora" in meta
    assert "datasets:\n- Abirate/english_quotes" in meta
    assert "BitsAndBytesConfig(load_in_4bit=True)" in card
    assert "final train loss" in card
