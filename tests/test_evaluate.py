"""evaluate(): generation scored by the adapter's formatter."""

from __future__ import annotations

from adaptool.evaluate import evaluate
from tests.helpers import DATA


def test_eval_scores_with_the_formatter(adapter_dir, registry):
    result = evaluate(
        adapter_dir,
        data=DATA / "quotes.jsonl",
        max_new_tokens=16,
        compare_base=True,
    )
    assert result.metrics["rows"] == 8
    assert set(result.metrics) >= {
        "tag_precision",
        "tag_recall",
        "tag_f1",
        "parses",
        "stopped_at_eos",
        "parses_and_stops",
    }
    assert all(0 <= v <= 1 for k, v in result.metrics.items() if k != "rows")
    assert result.base_metrics is not None and result.base_metrics["rows"] == 8
    default_split = evaluate(adapter_dir, max_new_tokens=4)
    assert default_split.metrics["rows"] == 2  # the recipe's eval split (25 % of 8)
