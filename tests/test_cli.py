"""Drive the real CLI: every config in configs/ must run, with a tiny backbone and tiny data."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from core.cli import run_cli
from domains.agriculture.synthetic import write_demo_scene
from domains.manufacturing import elpv as elpv_module

from .conftest import TINY_ARGS, make_defect_folders, write_defect_image
from .dicom_helpers import make_ct_study

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))


def _elpv(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    probs = np.array([0.0, 1 / 3, 2 / 3, 1.0] * 10)
    paths = []
    for i, p in enumerate(probs):
        paths.append(tmp_path / "elpv" / f"cell{i:04d}.png")
        write_defect_image(paths[-1], p >= 0.5, rng, size=40)
    monkeypatch.setattr(elpv_module, "elpv_records", lambda: (paths, probs, ["mono"] * 40))
    return []


def _folder(tmp_path, monkeypatch):
    return [f"--data.init_args.root={make_defect_folders(tmp_path / 'defects', per_class=8)}"]


def _agri(tmp_path):
    return write_demo_scene(tmp_path / "agri", 96, 96, sparse=0.2, patches_per_class=4, patch=16)


def _scene(tmp_path, monkeypatch):
    p = _agri(tmp_path)
    return [f"--data.init_args.image={p['scene']}", f"--data.init_args.labels={p['labels']}",
            "--data.init_args.tile_size=32", "--data.init_args.block_size=32",
            "--data.init_args.samples_per_epoch=4", "--model.init_args.decoder_channels=16"]


def _patches(tmp_path, monkeypatch):
    return [f"--data.init_args.root={_agri(tmp_path)['patches']}"]


def _dicom(tmp_path, monkeypatch):
    study = make_ct_study(tmp_path / "study", n_patients=8, per_patient=2)
    return [f"--data.init_args.manifest={study['labels']}", "--data.init_args.val_fraction=0.25",
            "--data.init_args.test_fraction=0.25"]


def _dicom_masks(tmp_path, monkeypatch):
    study = make_ct_study(tmp_path / "study", n_patients=8, per_patient=2)
    return [f"--data.init_args.manifest={study['masks']}", "--model.init_args.decoder_channels=16",
            "--data.init_args.val_fraction=0.25", "--data.init_args.test_fraction=0.25"]


# Per datamodule: how to give it tiny synthetic data. A config whose datamodule is missing here
# fails the test, so every new config is covered.
SYNTHETIC_DATA = {
    "ELPVDataModule": _elpv,
    "DefectFolderDataModule": _folder,
    "SceneSegmentationDataModule": _scene,
    "GeoTiffFolderDataModule": _patches,
    "DicomDataModule": _dicom,
    "DicomSegmentationDataModule": _dicom_masks,
}


def tiny_args(config: Path, tmp_path, monkeypatch) -> list[str]:
    data_class = yaml.safe_load(config.read_text())["data"]["class_path"].rsplit(".", 1)[-1]
    assert data_class in SYNTHETIC_DATA, f"add synthetic data for {data_class} used by {config}"
    return [
        "--config", str(config), *TINY_ARGS,
        "--data.init_args.image_size=32", "--data.init_args.batch_size=4",
        "--data.init_args.num_workers=0",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
        f"--trainer.default_root_dir={tmp_path / 'runs'}",
        *SYNTHETIC_DATA[data_class](tmp_path, monkeypatch),
    ]


@pytest.mark.parametrize("config", CONFIGS, ids=[str(c.relative_to(ROOT)) for c in CONFIGS])
def test_every_config_runs_fast_dev_run(config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = run_cli(["fit", *tiny_args(config, tmp_path, monkeypatch), "--trainer.fast_dev_run=true"])
    assert cli.trainer.state.finished
    assert cli.trainer.global_step == 1
    # Linked from the datamodule, never repeated in YAML.
    assert cli.model.hparams.num_classes == cli.datamodule.num_classes
    assert cli.model.hparams.class_names == cli.datamodule.class_names


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
