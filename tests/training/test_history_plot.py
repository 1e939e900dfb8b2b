import math

import pytest

from rnnkit.training import History, plot_history


def make_history():
    h = History()
    for e in range(1, 6):
        h.append_epoch(
            e,
            {
                "loss": 2.0 / e, "val_loss": 2.2 / e, "perplexity": math.exp(2.0 / e),
                "val_perplexity": math.exp(2.2 / e), "accuracy": 1 - 0.5 / e,
                "val_accuracy": 1 - 0.6 / e, "lr": 1.0 * 0.5 ** max(0, e - 2),
            },
        )  # fmt: skip
    return h


def test_history_pads_missing_keys():
    h = History()
    h.append_epoch(1, {"loss": 1.0})
    h.append_epoch(2, {"loss": 0.5, "val_loss": 0.7})
    assert h.history["val_loss"][0] != h.history["val_loss"][0]  # NaN
    assert h.history["val_loss"][1] == 0.7 and len(h.history["loss"]) == 2


def test_plot_history_writes_png(tmp_path):
    out = plot_history(make_history(), tmp_path / "plots" / "history.png", include_lr=True,
                       title="tiny run")  # fmt: skip
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_plot_history_from_dict_and_errors(tmp_path):
    out = plot_history({"loss": [1.0, 0.5], "val_loss": [1.2, 0.9]}, tmp_path / "d.png")
    assert out.stat().st_size > 0
    with pytest.raises(ValueError, match="no values for 'f1'"):
        plot_history({"loss": [1.0]}, tmp_path / "e.png", keys=["f1"])
    with pytest.raises(ValueError, match="nothing to plot"):
        plot_history({}, tmp_path / "e.png")
