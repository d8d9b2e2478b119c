"""Torch-free prediction with exported bundles: same outputs as Lightning, thresholds, refusal."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio

from core.cli import run_cli
from core.export import export_bundle
from core.torch_free import run_without_torch
from domains.agriculture.synthetic import write_demo_scene

from .conftest import TINY_ARGS, make_defect_folders
from .dicom_helpers import make_ct_study

ROOT = Path(__file__).resolve().parents[1]


def train(config: str, data_args: list[str], out: Path, epochs: int = 2):
    base = ["--config", str(ROOT / "configs" / config), *TINY_ARGS, *data_args,
            "--data.init_args.num_workers=0", f"--trainer.logger.init_args.save_dir={out}"]
    fit = run_cli(["fit", *base, f"--trainer.max_epochs={epochs}"])
    return base, fit.trainer.checkpoint_callback.best_model_path or str(Path(fit.trainer.log_dir) / "checkpoints" / "last.ckpt")


def predict_without_torch(bundle: Path, inputs: list, out: Path) -> None:
    result = run_without_torch(["predict", "--bundle", str(bundle), *map(str, inputs), "--out", str(out)])
    assert result.returncode == 0, result.stderr[-3000:]


def rows(path: Path) -> list[dict]:
    return list(csv.DictReader(path.open()))


@pytest.fixture(scope="module")
def defects(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("defects")
    root = make_defect_folders(tmp / "data", per_class=10)
    base, ckpt = train("manufacturing/folder.yaml", [f"--data.init_args.root={root}",
                       "--data.init_args.image_size=40", "--data.init_args.batch_size=8"], tmp / "runs")
    bundle = export_bundle(ckpt, tmp / "bundle")
    return {"root": root, "base": base, "ckpt": ckpt, "bundle": bundle, "tmp": tmp}


def test_torch_free_predict_matches_lightning_predict(defects, tmp_path):
    images = defects["root"] / "scratch"
    predict_without_torch(defects["bundle"], [str(images)], tmp_path / "ort")
    ort_rows = {r["id"]: r for r in rows(tmp_path / "ort" / "predictions.csv")}
    lightning = run_cli(["predict", *defects["base"], f"--ckpt_path={defects['ckpt']}",
                         f"--data.init_args.predict_paths=[{images}]"])
    pl_rows = rows(Path(lightning.trainer.log_dir) / "predictions.csv")
    assert len(pl_rows) == len(ort_rows) == 10
    for r in pl_rows:  # same files, same preprocessing, same network: same probabilities
        assert abs(float(r["prob_scratch"]) - float(ort_rows[r["id"]]["prob_scratch"])) < 1e-4
        # The threshold is the score of a validation image, which is among these files: at
        # that exact score a 1e-7 difference may flip the decision, anywhere else it may not.
        if abs(float(r["score"]) - float(r["threshold"])) > 1e-5:
            assert r["decision"] == ort_rows[r["id"]]["decision"]


def test_threshold_from_metadata_and_command_line(defects, tmp_path):
    from core.predict_bundle import predict

    meta = json.loads((defects["bundle"] / "metadata.json").read_text())
    stored = meta["decision"]["threshold"]
    out = predict(defects["bundle"], [defects["root"]], tmp_path / "a")
    report = json.loads(out["json"].read_text())
    assert report["threshold"] == pytest.approx(stored) and report["threshold_source"] == "bundle metadata"
    everything = predict(defects["bundle"], [defects["root"]], tmp_path / "b", threshold=0.0)
    nothing = predict(defects["bundle"], [defects["root"]], tmp_path / "c", threshold=1.01)
    assert {r["decision"] for r in rows(everything["csv"])} == {"positive"}
    assert {r["decision"] for r in rows(nothing["csv"])} == {"negative"}
    assert json.loads(everything["json"].read_text())["threshold_source"] == "command line"


def test_tampered_bundle_is_refused_by_predict(defects, tmp_path):
    import shutil

    copy = tmp_path / "bundle"
    shutil.copytree(defects["bundle"], copy)
    with (copy / "model.onnx").open("r+b") as f:
        f.seek(200)
        byte = f.read(1)
        f.seek(200)
        f.write(bytes([byte[0] ^ 0xFF]))
    result = run_without_torch(["predict", "--bundle", str(copy), str(defects["root"]), "--out", str(tmp_path / "o")])
    assert result.returncode == 2
    assert "model.onnx does not match the sha256" in result.stderr


def test_dicom_bundle_predicts_without_torch(tmp_path):
    study = make_ct_study(tmp_path / "study", n_patients=8, per_patient=2)
    _, ckpt = train("medical/classification.yaml", [f"--data.init_args.manifest={study['labels']}",
                    "--data.init_args.image_size=32", "--data.init_args.batch_size=8",
                    "--data.init_args.val_fraction=0.25", "--data.init_args.test_fraction=0.25"],
                    tmp_path / "runs", epochs=1)
    bundle = export_bundle(ckpt, tmp_path / "bundle")
    predict_without_torch(bundle, [str(study["slices"])], tmp_path / "out")
    out = rows(tmp_path / "out" / "predictions.csv")
    assert len(out) == 16 and {"prob_contrast", "prob_plain", "score", "decision"} <= set(out[0])
    text = (tmp_path / "out" / "predictions.csv").read_text() + (tmp_path / "out" / "predictions.json").read_text()
    assert "ZZPID" not in text and "Testperson" not in text


def test_scene_bundle_writes_the_same_georeferenced_map(tmp_path):
    data = write_demo_scene(tmp_path / "agri", 96, 96, sparse=0.2, patches_per_class=1)
    base, ckpt = train("agriculture/segmentation.yaml", [
        "--model.init_args.decoder_channels=16", f"--data.init_args.image={data['scene']}",
        f"--data.init_args.labels={data['labels']}", "--data.init_args.tile_size=32",
        "--data.init_args.block_size=32", "--data.init_args.samples_per_epoch=8",
        "--data.init_args.predict_overlap=8"], tmp_path / "runs", epochs=1)
    bundle = export_bundle(ckpt, tmp_path / "bundle")
    predict_without_torch(bundle, [str(data["scene"])], tmp_path / "ort")
    lightning = run_cli(["predict", *base, f"--ckpt_path={ckpt}", f"--data.init_args.predict_image={data['scene']}"])
    with rasterio.open(tmp_path / "ort" / "scene_classes.tif") as a, \
            rasterio.open(Path(lightning.trainer.log_dir) / "scene_classes.tif") as b, \
            rasterio.open(data["scene"]) as src:
        assert (a.crs, a.transform, a.shape) == (src.crs, src.transform, src.shape)
        agree = (a.read(1) == b.read(1)).mean()
    assert agree > 0.999  # float32 ties aside, ORT and torch give the same class map


def test_entry_dispatch(tmp_path, capsys):
    from core.entry import main

    with pytest.raises(SystemExit) as info:
        main(["predict", "--bundle", str(tmp_path / "nothing"), str(tmp_path), "--out", str(tmp_path / "o")])
    assert info.value.code == 2
    assert "is not an export bundle" in capsys.readouterr().err


def test_medical_segmentation_bundle_writes_png_masks(tmp_path):
    from PIL import Image

    study = make_ct_study(tmp_path / "study", n_patients=8, per_patient=2)
    _, ckpt = train("medical/segmentation.yaml", [f"--data.init_args.manifest={study['masks']}",
                    "--model.init_args.decoder_channels=16", "--data.init_args.image_size=32",
                    "--data.init_args.batch_size=8", "--data.init_args.val_fraction=0.25",
                    "--data.init_args.test_fraction=0.25"], tmp_path / "runs", epochs=1)
    bundle = export_bundle(ckpt, tmp_path / "bundle")
    predict_without_torch(bundle, [str(study["slices"])], tmp_path / "out")
    masks = sorted((tmp_path / "out").glob("*_mask.png"))
    assert len(masks) == 16
    mask = np.asarray(Image.open(masks[0]))
    assert mask.shape == (32, 32) and set(np.unique(mask).tolist()) <= {0, 1}
