"""The CLI run around training: checkpoint settings, progress output, resuming, error lines."""

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from core.cli import run_cli
from core.progress import EpochSummary

from .config_runs import ROOT, tiny_args
from .conftest import TINY_ARGS, make_defect_folders

CONFIG = ROOT / "configs" / "manufacturing" / "folder.yaml"
EXE = Path(sys.executable).parent / "convnext-domains"


def _val_rows(log_dir: Path) -> list[dict[str, str]]:
    rows = csv.DictReader((Path(log_dir) / "metrics.csv").open())
    return [r for r in rows if r.get("val/auroc")]


def test_user_model_checkpoint_in_yaml_is_kept(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = yaml.safe_load(CONFIG.read_text())
    config["trainer"]["callbacks"] = [{
        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
        "init_args": {"monitor": "val/acc", "mode": "max", "save_top_k": 2,
                      "filename": "best-{epoch}-{val/acc:.4f}", "auto_insert_metric_name": False},
    }]
    user_config = tmp_path / "mine.yaml"
    user_config.write_text(yaml.safe_dump(config))
    args = tiny_args(CONFIG, tmp_path, monkeypatch)
    args[args.index(str(CONFIG))] = str(user_config)
    fit = run_cli(["fit", *args, "--trainer.max_epochs=2"])
    checkpoints = fit.trainer.checkpoint_callbacks
    assert [(c.monitor, c.mode, c.save_top_k) for c in checkpoints] == [("val/acc", "max", 2)]
    saved = sorted(p.name for p in Path(checkpoints[0].dirpath).glob("*.ckpt"))
    score = float(checkpoints[0].best_model_score)
    assert any(name.endswith(f"-{score:.4f}.ckpt") for name in saved), saved


def test_default_checkpoints_track_the_task_metric_and_the_last_epoch(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fit = run_cli(["fit", *tiny_args(CONFIG, tmp_path, monkeypatch), "--trainer.max_epochs=3"])
    best, last = fit.trainer.checkpoint_callbacks
    assert (best.monitor, best.mode) == ("val/auroc", "max")
    # last.ckpt holds the final epoch even when the monitored metric stopped improving.
    ckpt = torch.load(Path(last.dirpath) / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 2


def test_progress_bar_can_be_disabled_and_epochs_are_summarised(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    fit = run_cli(["fit", *tiny_args(CONFIG, tmp_path, monkeypatch), "--trainer.max_epochs=2",
                   "--trainer.enable_progress_bar=false"])
    assert fit.trainer.state.finished and fit.trainer.progress_bar_callback is None
    assert any(isinstance(c, EpochSummary) for c in fit.trainer.callbacks)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("epoch ")]
    assert [ln.split()[1] for ln in lines] == ["1/2", "2/2"]
    assert all("train/loss" in ln and "val/auroc" in ln for ln in lines)
    # "best" is the best monitored value so far, this epoch included.
    values = [float(ln.split("val/auroc ")[1].split()[0]) for ln in lines]
    bests = [float(ln.split("best ")[1].split()[0]) for ln in lines]
    assert bests == [max(values[: i + 1]) for i in range(len(values))]
    # The epoch's train/loss is the one in metrics.csv (a mean over samples, not batches).
    logged = [float(r["train/loss_epoch"]) for r in csv.DictReader(
        (Path(fit.trainer.log_dir) / "metrics.csv").open()) if r.get("train/loss_epoch")]
    shown = [float(ln.split("train/loss ")[1].split()[0]) for ln in lines]
    assert shown == pytest.approx(logged, abs=2e-4)


def test_console_script_prints_one_line_per_epoch_when_not_a_terminal(tmp_path):
    root = make_defect_folders(tmp_path / "defects", per_class=6)
    result = subprocess.run(
        [str(EXE), "fit", "--config", str(CONFIG), *TINY_ARGS, f"--data.init_args.root={root}",
         "--data.init_args.image_size=32", "--data.init_args.num_workers=0",
         "--data.init_args.batch_size=4", "--trainer.max_epochs=2",
         f"--trainer.logger.init_args.save_dir={tmp_path}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    epochs = [ln for ln in result.stdout.splitlines() if ln.startswith("epoch ")]
    assert len(epochs) == 2 and "val/auroc" in epochs[-1], result.stdout[-2000:]
    # Our own INFO lines reach the console too (nothing configured logging before).
    assert "INFO core.data: split sizes" in result.stderr


def test_resume_continues_in_the_same_run_folder_with_its_best_score(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = tiny_args(CONFIG, tmp_path, monkeypatch)
    first = run_cli(["fit", *base, "--trainer.max_epochs=2"])
    log_dir = Path(first.trainer.log_dir)
    best_before = float(first.trainer.checkpoint_callback.best_model_score)
    last = log_dir / "checkpoints" / "last.ckpt"
    resumed = run_cli(["fit", *base, "--trainer.max_epochs=4", f"--ckpt_path={last}"])
    assert Path(resumed.trainer.log_dir) == log_dir
    assert not (log_dir.parent / "version_1").exists()
    rows = _val_rows(log_dir)
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3]
    best_after = float(resumed.trainer.checkpoint_callback.best_model_score)
    assert best_after == pytest.approx(max(float(r["val/auroc"]) for r in rows))
    assert best_after >= best_before


def _run(args, cwd):
    return subprocess.run([str(EXE), *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_data_errors_print_one_error_line_and_verbose_shows_the_traceback(tmp_path):
    args = ["fit", "--config", str(CONFIG), f"--data.init_args.root={tmp_path / 'missing'}"]
    result = _run(args, tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and str(tmp_path / "missing") in errors[0]
    verbose = _run([*args, "--verbose"], tmp_path)
    assert verbose.returncode != 0 and "Traceback" in verbose.stderr


def test_errors_during_a_run_are_one_line_too(tmp_path):
    # A DataError raised inside Trainer.predict (not at instantiation): no Lightning traceback.
    root = make_defect_folders(tmp_path / "defects", per_class=6)
    fit = _run(["fit", "--config", str(CONFIG), *TINY_ARGS, f"--data.init_args.root={root}",
                "--data.init_args.image_size=32", "--data.init_args.num_workers=0",
                "--trainer.max_epochs=1", f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}"], tmp_path)
    assert fit.returncode == 0, fit.stderr[-2000:]
    ckpt = next(tmp_path.rglob("last.ckpt"))
    result = _run(["predict", "--config", str(CONFIG), *TINY_ARGS, f"--data.init_args.root={root}",
                   "--data.init_args.image_size=32", "--data.init_args.num_workers=0",
                   f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}", f"--ckpt_path={ckpt}",
                   f"--data.init_args.predict_paths=[{tmp_path / 'nothing_here'}]"], tmp_path)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert "nothing_here" in next(ln for ln in result.stderr.splitlines() if ln.startswith("error:"))


def test_top_level_help_lists_every_command(tmp_path):
    result = _run(["--help"], tmp_path)
    assert result.returncode == 0
    for command in ("fit", "validate", "test", "predict", "export", "predict --bundle", "--verbose"):
        assert command in result.stdout
    fit_help = _run(["fit", "--help"], tmp_path)
    assert fit_help.returncode == 0 and "--ckpt_path" in fit_help.stdout


@pytest.mark.parametrize("case", ["pretrained_offline", "no_root_nor_manifest", "missing_ckpt"])
def test_errors_wrapped_by_the_config_parser_are_one_line_too(tmp_path, case):
    # jsonargparse wraps errors raised while it builds the model/datamodule in its own ValueError;
    # a missing checkpoint used to surface as Lightning's FileNotFoundError traceback.
    import os

    root = make_defect_folders(tmp_path / "defects", per_class=4)
    base = ["--config", str(CONFIG), *TINY_ARGS, "--data.init_args.image_size=32",
            f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty_cache")}
    args, expected = {
        "pretrained_offline": (["fit", *base, f"--data.init_args.root={root}",
                                "--model.init_args.backbone=convnext_atto",
                                "--model.init_args.pretrained=true"], "Pass a local weights file"),
        "no_root_nor_manifest": (["fit", *base, "--data.init_args.root=null"],
                                 "data.init_args.root"),
        "missing_ckpt": (["test", *base, f"--data.init_args.root={root}",
                          f"--ckpt_path={tmp_path / 'nope.ckpt'}"], "nope.ckpt' does not exist"),
    }[case]
    result = subprocess.run([str(EXE), *args], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], result.stderr[-2000:]


def test_predict_uses_the_image_size_the_model_was_trained_at(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = tiny_args(CONFIG, tmp_path, monkeypatch)  # image_size=32
    fit = run_cli(["fit", *base, "--trainer.max_epochs=1"])
    ckpt = Path(fit.trainer.checkpoint_callback.best_model_path)
    paths = f"--data.init_args.predict_paths=[{tmp_path / 'defects' / 'scratch'}]"

    def probs(*extra):
        pred = run_cli(["predict", *base, *extra, f"--ckpt_path={ckpt}", paths])
        rows = csv.DictReader((Path(pred.trainer.log_dir) / "predictions.csv").open())
        return pred, [float(r["prob_scratch"]) for r in rows]

    _, same = probs()
    # The config's default size (224 in folder.yaml) must not silently replace the trained 32.
    pred, other = probs("--data.init_args.image_size=224")
    assert pred.datamodule.hparams.image_size in (32, [32, 32])
    assert other == pytest.approx(same, abs=1e-6)


def test_export_finds_the_test_report_of_its_checkpoint(tmp_path, monkeypatch):
    # `test` logs into a new version folder; the bundle used to say "no metrics.json found".
    import json

    from core.export_metadata import run_metrics

    monkeypatch.chdir(tmp_path)
    base = tiny_args(CONFIG, tmp_path, monkeypatch)
    fit = run_cli(["fit", *base, "--trainer.max_epochs=2"])
    best = Path(fit.trainer.checkpoint_callback.best_model_path)
    last = best.parent / "last.ckpt"
    assert run_metrics(best) is None
    tested = run_cli(["test", *base, f"--ckpt_path={best}"])
    report_path = Path(tested.trainer.log_dir) / "metrics.json"
    assert report_path.parent != best.parents[1]
    report = json.loads(report_path.read_text())
    assert report["checkpoint"] == str(best.resolve())
    assert run_metrics(best) == report
    assert run_metrics(last) is None  # a report of another checkpoint is never borrowed
