"""loss.png: plot_losses writes a PNG for train-only and train + eval records."""

from __future__ import annotations

import pytest

from adaptool.training.plot import plot_losses

PNG = b"\x89PNG\r\n\x1a\n"
TRAIN = [{"step": s, "loss": 3.0 / s, "lr": 1e-3} for s in range(1, 6)]
EVALS = [{"step": 2, "eval_loss": 1.9}, {"step": 5, "eval_loss": 0.8}]


@pytest.mark.parametrize("records", [TRAIN, TRAIN + EVALS], ids=["train", "train+eval"])
def test_plot_losses_writes_a_png(tmp_path, records):
    path = tmp_path / "loss.png"
    assert plot_losses(records, path, title="run") == path
    data = path.read_bytes()
    assert data[:8] == PNG
    assert data[12:16] == b"IHDR"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (700, 400)  # 7 x 4 inches at 100 dpi


def test_eval_points_change_the_picture(tmp_path):
    train_only = plot_losses(TRAIN, tmp_path / "a.png").read_bytes()
    with_eval = plot_losses(TRAIN + EVALS, tmp_path / "b.png").read_bytes()
    assert train_only != with_eval
