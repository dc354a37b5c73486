"""Loading bases and tokenizers: precision auto, dtypes."""

from __future__ import annotations


def test_precision_auto_resolves_to_what_the_machine_computes_natively(monkeypatch):
    from adaptool import modeling

    assert modeling.resolve_precision("fp32") == "fp32"
    monkeypatch.setattr(modeling, "device", lambda: "cpu")
    monkeypatch.setattr(modeling, "cpu_has_native_bf16", lambda: True)
    assert modeling.resolve_precision("auto") == "bf16"
    monkeypatch.setattr(modeling, "cpu_has_native_bf16", lambda: False)
    assert modeling.resolve_precision("auto") == "fp32"
