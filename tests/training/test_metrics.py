"""metrics.jsonl: written whole (atomically), appended a line at a time, read back; last()."""

from __future__ import annotations

from adaptool.training.metrics import append_metrics, last, read_metrics, write_metrics

RECORDS = [
    {"step": 1, "loss": 2.5, "lr": 1e-3},
    {"step": 2, "loss": 2.0, "lr": 2e-3, "eval_loss": 2.2},
    {"step": 3, "loss": 1.5, "tokens_per_s": 812.5},
]


def test_read_without_a_file_is_empty(tmp_path):
    assert read_metrics(tmp_path) == []


def test_write_then_read_round_trips(tmp_path):
    write_metrics(tmp_path, RECORDS)
    assert read_metrics(tmp_path) == RECORDS
    lines = (tmp_path / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]  # no temporary file left


def test_write_replaces_what_was_there(tmp_path):
    write_metrics(tmp_path, RECORDS)
    write_metrics(tmp_path, RECORDS[:1])
    assert read_metrics(tmp_path) == RECORDS[:1]
    write_metrics(tmp_path, [])
    assert read_metrics(tmp_path) == []


def test_append_adds_one_line_each(tmp_path):
    append_metrics(tmp_path, RECORDS[0])  # creates the file
    assert read_metrics(tmp_path) == RECORDS[:1]
    write_metrics(tmp_path, RECORDS[:2])
    append_metrics(tmp_path, RECORDS[2])
    assert read_metrics(tmp_path) == RECORDS


def test_read_skips_blank_lines(tmp_path):
    write_metrics(tmp_path, RECORDS[:1])
    with (tmp_path / "metrics.jsonl").open("a", encoding="utf-8") as fh:
        fh.write("\n")
    append_metrics(tmp_path, RECORDS[1])
    assert read_metrics(tmp_path) == RECORDS[:2]


def test_last_is_the_newest_value_of_a_key():
    assert last(RECORDS, "loss") == 1.5
    assert last(RECORDS, "eval_loss") == 2.2
    assert last(RECORDS, "lr") == 2e-3
    assert last(RECORDS, "grad_norm") is None
    assert last([], "loss") is None
    assert last([{"step": 1, "eval_loss": 0.0}, {"step": 2}], "eval_loss") == 0.0
