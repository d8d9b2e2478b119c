"""Report files appear complete or not at all (regression: they were written in place)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
from matplotlib.figure import Figure

from core.reporting import save_figure, write_json_report


def test_an_interrupted_metrics_json_leaves_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    write_json_report(path, {"metrics": {"map": 0.5}})
    real_write = Path.write_text

    def half_then_fail(self, text, *args, **kwargs):
        real_write(self, text[: len(text) // 2])
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(Path, "write_text", half_then_fail)
    with pytest.raises(KeyboardInterrupt):
        write_json_report(path, {"metrics": {"map": 0.9}})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"metrics": {"map": 0.5}}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_an_interrupted_figure_leaves_no_file_and_closes_the_figure(tmp_path, monkeypatch):
    def partial_png(self, fname, *args, **kwargs):
        Path(fname).write_bytes(b"\x89PNG\r\n")
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", partial_png)
    fig = plt.figure()
    with pytest.raises(OSError, match="disk full"):
        save_figure(fig, tmp_path / "detections.png")
    assert list(tmp_path.iterdir()) == []
    assert not plt.fignum_exists(fig.number)
