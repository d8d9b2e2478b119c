"""The stored operating point is exactly the one chosen on validation, with or without EMA."""

import csv
import math
from pathlib import Path

import pytest
import torch

from core.cli import run_cli

from .config_runs import ROOT, tiny_args

CONFIG = ROOT / "configs" / "manufacturing" / "folder.yaml"


def _logged_thresholds(log_dir: Path) -> dict[int, float]:
    rows = list(csv.DictReader((log_dir / "metrics.csv").open()))
    return {int(r["epoch"]): float(r["val/op_threshold"]) for r in rows
            if r.get("val/op_threshold") not in (None, "")}


@pytest.mark.parametrize("class_weights", ["balanced", "null"])
@pytest.mark.parametrize("sanity", [0, 2])
def test_ema_checkpoint_keeps_the_validation_threshold(tmp_path, monkeypatch, class_weights, sanity):
    monkeypatch.chdir(tmp_path)
    fit = run_cli(["fit", *tiny_args(CONFIG, tmp_path, monkeypatch), "--trainer.max_epochs=3",
                   "--model.init_args.ema_decay=0.9", f"--model.init_args.class_weights={class_weights}",
                   f"--trainer.num_sanity_val_steps={sanity}"])
    callback = fit.trainer.checkpoint_callback
    best = torch.load(callback.best_model_path, map_location="cpu", weights_only=False)
    logged = _logged_thresholds(Path(fit.trainer.log_dir))
    assert set(logged) == {0, 1, 2}
    stored = float(best["state_dict"]["threshold"])
    assert not math.isnan(stored)
    assert stored == pytest.approx(logged[best["epoch"]], abs=1e-6)
    last = torch.load(Path(callback.dirpath) / "last.ckpt", map_location="cpu", weights_only=False)
    assert float(last["state_dict"]["threshold"]) == pytest.approx(logged[2], abs=1e-6)
    # The weights saved are the averaged ones, not the raw training weights.
    raw = best["current_model_state"]
    assert any(not torch.equal(raw[k], v) for k, v in best["state_dict"].items() if k in raw)
