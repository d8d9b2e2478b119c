"""The real CLI: every config in configs/ parses (its domain's tests run it); fit, test, predict."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from core.cli import run_cli

from .config_runs import ROOT, tiny_args
from .conftest import TINY_ARGS, make_defect_folders

CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))


def test_every_config_folder_has_a_test_that_runs_it():
    # Each domain's tests/test_<domain>_configs.py runs its configs (fast_dev_run) on synthetic
    # data it writes itself, so a domain cloned with new-domain brings its own.
    folders = sorted({c.parent.name for c in CONFIGS})
    assert {"manufacturing", "medical", "agriculture"} <= set(folders)
    missing = [f for f in folders if not (ROOT / "tests" / f"test_{f}_configs.py").is_file()]
    assert missing == [], f"add tests/test_<domain>_configs.py for configs/{missing}"


@pytest.mark.parametrize("config", CONFIGS, ids=[str(c.relative_to(ROOT)) for c in CONFIGS])
def test_print_config(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"].startswith(("domains.", "core."))
    assert "pretrained" in printed["model"]["init_args"]


def test_fit_test_predict_cycle(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = ROOT / "configs" / "manufacturing" / "folder.yaml"
    base = tiny_args(config, tmp_path, monkeypatch)
    fit = run_cli(["fit", *base, "--trainer.max_epochs=2"])
    best = fit.trainer.checkpoint_callback.best_model_path
    assert best and Path(best).is_file()
    import torch

    ckpt = torch.load(best, map_location="cpu", weights_only=False)
    assert ckpt["preprocessing"]["class_names"] == ["good", "scratch"]
    assert len(ckpt["preprocessing"]["mean"]) == 1
    assert "threshold" in ckpt["state_dict"]

    test = run_cli(["test", *base, f"--ckpt_path={best}"])
    report = json.loads((Path(test.trainer.log_dir) / "metrics.json").read_text())
    assert report["num_samples"] == test.datamodule.split_sizes()["test"] > 0
    assert {"acc", "auroc", "op_defect_recall", "op_false_reject_rate"} <= set(report["metrics"])
    assert (Path(test.trainer.log_dir) / "roc_curve.png").is_file()

    pred = run_cli(["predict", *base, f"--ckpt_path={best}",
                    f"--data.init_args.predict_paths=[{tmp_path / 'defects' / 'scratch'}]"])
    rows = list(csv.DictReader((Path(pred.trainer.log_dir) / "predictions.csv").open()))
    assert len(rows) == 8
    assert {"id", "prob_good", "prob_scratch", "predicted_class", "decision"} <= set(rows[0])
    assert all(abs(float(r["prob_good"]) + float(r["prob_scratch"]) - 1) < 1e-5 for r in rows)


def test_console_script_exits_zero(tmp_path):
    root = make_defect_folders(tmp_path / "defects", per_class=4)
    config = ROOT / "configs" / "manufacturing" / "folder.yaml"
    exe = Path(sys.executable).parent / "convnext-domains"
    result = subprocess.run(
        [str(exe), "fit", "--config", str(config), *TINY_ARGS, f"--data.init_args.root={root}",
         "--data.init_args.image_size=32", "--data.init_args.num_workers=0",
         "--trainer.fast_dev_run=true", f"--trainer.logger.init_args.save_dir={tmp_path}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
