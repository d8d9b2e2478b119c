"""Export bundles: checkpoints of real (tiny) CLI runs -> model.onnx + metadata.json + README.md.

Three runs are trained once per module through the real CLI (manufacturing folder classifier,
agriculture scene segmentation with UPerNet, DICOM classifier) and exported once; the tests
check the bundle contents against the checkpoints, ONNX Runtime against Lightning, and the
failure modes: existing folders, interrupted exports, parity failures and tampering.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from core import export
from core.bundle import SCHEMA_VERSION, Bundle, BundleError, load_bundle
from core.classification import ClassificationTask
from core.cli import run_cli
from core.errors import DataError
from domains.agriculture.synthetic import write_demo_scene

from .conftest import TINY, TINY_ARGS, make_defect_folders
from .dicom_helpers import make_ct_study

ROOT = Path(__file__).resolve().parents[1]
DOMAINS = ("manufacturing", "agriculture", "medical")


@dataclass
class Trained:
    """A finished tiny run: its best checkpoint, the trained model and its datamodule."""

    ckpt: Path
    model: Any
    datamodule: Any


def _train(tmp: Path, config: str, data_args: list[str]) -> Trained:
    args = [
        "--config", str(ROOT / "configs" / config),
        *TINY_ARGS,
        "--data.init_args.image_size=32", "--data.init_args.batch_size=4",
        "--data.init_args.num_workers=0", "--trainer.max_epochs=1",
        # Absolute paths: the module-scoped fixture cannot chdir.
        f"--trainer.logger.init_args.save_dir={tmp / 'runs'}",
        f"--trainer.default_root_dir={tmp / 'runs'}", *data_args,
    ]
    cli = run_cli(args, run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    # As `make demo` does: test in the same run, so metrics.json lands next to checkpoints/.
    cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path="best")
    return Trained(Path(cli.trainer.checkpoint_callback.best_model_path), cli.model, cli.datamodule)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Trained]:
    torch.set_num_threads(2)
    tmp = tmp_path_factory.mktemp("runs")
    defects = make_defect_folders(tmp / "defects", per_class=8)
    scene = write_demo_scene(tmp / "agri", 96, 96, sparse=0.2, patches_per_class=1)
    study = make_ct_study(tmp / "study", n_patients=8, per_patient=2)
    return {
        "manufacturing": _train(tmp / "m", "manufacturing/folder.yaml",
                                [f"--data.init_args.root={defects}"]),
        "agriculture": _train(tmp / "a", "agriculture/segmentation.yaml", [
            f"--data.init_args.image={scene['scene']}", f"--data.init_args.labels={scene['labels']}",
            "--data.init_args.tile_size=32", "--data.init_args.block_size=32",
            "--data.init_args.samples_per_epoch=8", "--model.init_args.decoder_channels=16"]),
        "medical": _train(tmp / "d", "medical/classification.yaml", [
            f"--data.init_args.manifest={study['labels']}", "--data.init_args.val_fraction=0.25",
            "--data.init_args.test_fraction=0.25"]),
    }


@pytest.fixture(scope="module")
def bundles(trained, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("bundles")
    return {name: export.export_bundle(t.ckpt, out / name) for name, t in trained.items()}


def _ckpt(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if ".partial-" in p.name or ".old-" in p.name]


# ---- contents -----------------------------------------------------------------------------
EXPECTED = {
    "manufacturing": ("classification", "image", ["good", "scratch"], [None, 1, 32, 32]),
    "agriculture": ("segmentation", "geotiff_scene", ["water", "crop", "bare_soil"], [None, 6, 32, 32]),
    "medical": ("classification", "dicom", ["contrast", "plain"], [None, 3, 32, 32]),
}


@pytest.mark.parametrize("name", DOMAINS)
def test_bundle_metadata_matches_checkpoint(name, trained, bundles):
    path, ckpt = bundles[name], _ckpt(trained[name].ckpt)
    assert {"model.onnx", "metadata.json", "README.md"} == {p.name for p in path.iterdir()}
    meta = load_bundle(path).meta  # verifies the schema version, the digest and every sha256
    kind, reader, classes, shape = EXPECTED[name]
    assert meta["schema_version"] == SCHEMA_VERSION
    assert (meta["domain"], meta["task"], meta["class_names"]) == (name, kind, classes)
    assert meta["task_class"] == ckpt["task_class"]
    assert meta["input"]["reader"] == reader and meta["input"]["shape"] == shape
    assert meta["input"]["mean"] == ckpt["preprocessing"]["mean"]
    assert (meta["input"]["dtype"], meta["input"]["layout"]) == ("float32", "NCHW")
    assert meta["output"] == {"name": "logits", "activation": "softmax",
                              "shape": "N,K,H,W" if kind == "segmentation" else "N,K"}
    assert meta["training_data"] == ckpt["data_fingerprint"]
    assert meta["training_data"]["split_sizes"]["train"] > 0
    run_metrics = json.loads((trained[name].ckpt.parents[1] / "metrics.json").read_text())
    assert meta["metrics"]["metrics"].keys() == run_metrics["metrics"].keys()
    assert set(meta["versions"]) == {"convnext-domains", "torch", "lightning", "timm", "onnx",
                                     "onnxruntime", "numpy", "python"}
    assert meta["backbone"]["pretrained"] == "none"
    assert meta["backbone"]["depths"] == TINY["depths"] and meta["backbone"]["dims"] == TINY["dims"]
    assert meta["parity"]["max_abs_diff"] < 1e-4 and meta["parity"]["samples"] == 4
    assert set(meta["files"]) == {"model.onnx", "README.md"}
    card = (path / "README.md").read_text()
    assert "convnext-domains predict --bundle DIR" in card and classes[0] in card
    if kind == "segmentation":
        assert meta["decision"] is None
    else:
        decision = meta["decision"]
        assert decision["threshold"] == pytest.approx(float(ckpt["state_dict"]["threshold"]))
        assert decision["positive_index"] == [1] and decision["positive_classes"] == [classes[1]]
        assert f"{decision['threshold']:.4g}" in card and "--threshold T" in card
    if name == "medical":
        assert "Not a medical device" in card and "pydicom" in card
        assert meta["decision"]["metric_names"]["recall"] == "op_sensitivity"


@pytest.mark.parametrize("name", DOMAINS)
def test_onnx_matches_lightning_on_a_real_sample(name, trained, bundles):
    batch = next(iter(trained[name].datamodule.test_dataloader()))
    images = batch["image"]
    expected = export.lightning_probabilities(trained[name].model.eval(), images)
    got = load_bundle(bundles[name]).probabilities(images.numpy())
    assert got.shape == expected.shape and got.shape[0] == images.shape[0]
    assert np.abs(got - expected).max() < 1e-4


def test_uper_pyramid_pooling_replacement_is_exact():
    x = torch.randn(2, 3, 7, 5)
    for size_out in [(1, 1), (2, 3), (3, 2), (6, 6)]:
        fixed = export.FixedAdaptiveAvgPool2d(x.shape[-2:], size_out)
        torch.testing.assert_close(fixed(x), F.adaptive_avg_pool2d(x, size_out))
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.AdaptiveAvgPool2d(3))
    with export.exportable_pools(model, x) as swapped:
        assert swapped == 1 and isinstance(model[1], export.FixedAdaptiveAvgPool2d)
    assert isinstance(model[1], nn.AdaptiveAvgPool2d)  # restored


def test_core_multilabel_checkpoint_and_local_weights_name(tmp_path):
    task = ClassificationTask(**TINY, in_chans=3, num_classes=3, class_names=["a", "b", "c"],
                              multilabel=True)
    hparams = {**dict(task.hparams), "pretrained": "/home/alice/weights/convnext_atto.safetensors"}
    ckpt = tmp_path / "ml.ckpt"
    torch.save({"task_class": "core.classification.ClassificationTask", "hyper_parameters": hparams,
                "state_dict": task.state_dict(),
                "preprocessing": {"reader": "image", "in_chans": 3, "image_size": [32, 48],
                                  "mean": [0.5] * 3, "std": [0.25] * 3}}, ckpt)
    meta = load_bundle(export.export_bundle(ckpt, tmp_path / "b")).meta
    assert (meta["domain"], meta["task"], meta["output"]["activation"]) == ("core", "multilabel", "sigmoid")
    assert meta["input"]["shape"] == [None, 3, 32, 48]
    assert meta["decision"] is None and meta["metrics"] is None and meta["training_data"] is None
    # The weights' origin is a file name only: a full path would leak a user name.
    assert meta["backbone"]["pretrained"] == "convnext_atto.safetensors"
    assert meta["backbone"]["weight_licence"].startswith("unknown")
    hub = export.backbone_info(task, pretrained=True)
    assert hub["pretrained"] == "timm hub" and hub["weight_licence"]  # from timm's pretrained cfg
    assert export.backbone_info(task, pretrained=False)["pretrained"] == "none"
    for name in ("metadata.json", "README.md"):
        assert "alice" not in (tmp_path / "b" / name).read_text()
    assert meta["parity"]["max_abs_diff"] < 1e-4


# ---- files and folders --------------------------------------------------------------------
def test_include_checkpoint_and_nothing_written_elsewhere(trained, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the prediction writers would write predictions.csv here
    source = trained["manufacturing"].ckpt
    path = export.export_bundle(source, "bundle", include_checkpoint=True)
    assert path == tmp_path / "bundle"
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]
    meta = load_bundle(path).meta
    assert "model.ckpt" in meta["files"]
    assert (path / "model.ckpt").read_bytes() == source.read_bytes()
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's private 0700


def test_existing_folder_needs_overwrite(trained, tmp_path):
    ckpt, out = trained["manufacturing"].ckpt, tmp_path / "bundle"
    export.export_bundle(ckpt, out)
    before = (out / "metadata.json").read_text()
    with pytest.raises(DataError, match="already exists.*--overwrite"):
        export.export_bundle(ckpt, out)
    assert (out / "metadata.json").read_text() == before
    export.export_bundle(ckpt, out, include_checkpoint=True, overwrite=True)
    assert "model.ckpt" in load_bundle(out).meta["files"]
    assert _leftovers(tmp_path) == [] and [p.name for p in tmp_path.iterdir()] == ["bundle"]


def test_overwrite_refuses_a_folder_that_is_not_a_bundle(trained, tmp_path):
    out = tmp_path / "documents"
    (out / "notes.txt").parent.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="not an export bundle"):
        export.export_bundle(trained["manufacturing"].ckpt, out, overwrite=True)
    assert (out / "notes.txt").read_text() == "keep me" and _leftovers(tmp_path) == []


def _boom(*args, **kwargs):
    raise KeyboardInterrupt("simulated interruption")


@pytest.mark.parametrize("where", ["onnx", "parity", "sealed"])
def test_interrupted_export_leaves_nothing(where, trained, tmp_path, monkeypatch):
    target = {"onnx": (torch.onnx, "export"), "parity": (export, "lightning_probabilities"),
              "sealed": (export, "load_bundle")}[where]  # load_bundle runs after metadata.json
    monkeypatch.setattr(*target, _boom)
    with pytest.raises(KeyboardInterrupt):
        export.export_bundle(trained["manufacturing"].ckpt, tmp_path / "bundle")
    assert list(tmp_path.iterdir()) == []


def test_failed_rename_keeps_the_old_bundle(trained, tmp_path, monkeypatch):
    ckpt, out = trained["manufacturing"].ckpt, tmp_path / "bundle"
    export.export_bundle(ckpt, out)
    before = (out / "metadata.json").read_text()
    real_replace, calls = os.replace, []

    def flaky_replace(src, dst):
        calls.append(Path(src).name)
        if ".partial-" in Path(src).name:  # the new bundle cannot be moved in
            raise OSError("simulated rename failure")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", flaky_replace)
    with pytest.raises(OSError, match="simulated"):
        export.export_bundle(ckpt, out, include_checkpoint=True, overwrite=True)
    assert len(calls) == 3  # old aside, new in (fails), old back
    assert (out / "metadata.json").read_text() == before
    load_bundle(out)
    assert _leftovers(tmp_path) == []


def test_parity_failure_writes_no_bundle(trained, tmp_path, monkeypatch):
    ckpt = trained["manufacturing"].ckpt
    with pytest.raises(DataError, match="parity check failed"):
        export.export_bundle(ckpt, tmp_path / "a", tolerance=-1.0)
    real = Bundle.probabilities
    monkeypatch.setattr(Bundle, "probabilities", lambda self, batch: real(self, batch) + 1e-3)
    with pytest.raises(DataError, match=r"differ by up to 0\.001"):
        export.export_bundle(ckpt, tmp_path / "b")
    assert list(tmp_path.iterdir()) == []


# ---- tampering ----------------------------------------------------------------------------
def _copy(bundles: dict[str, Path], tmp_path: Path) -> Path:
    return Path(shutil.copytree(bundles["manufacturing"], tmp_path / "copy"))


def test_changed_model_file_is_refused(bundles, tmp_path):
    path = _copy(bundles, tmp_path)
    data = bytearray((path / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (path / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="model.onnx"):
        load_bundle(path)


def test_edited_threshold_is_refused(bundles, tmp_path):
    path = _copy(bundles, tmp_path)
    meta = json.loads((path / "metadata.json").read_text())
    meta["decision"]["threshold"] = 0.01
    (path / "metadata.json").write_text(json.dumps(meta, indent=2))
    with pytest.raises(BundleError, match="modified after export"):
        load_bundle(path)


def test_other_schema_major_is_refused(bundles, tmp_path):
    path = _copy(bundles, tmp_path)
    meta = json.loads((path / "metadata.json").read_text())
    meta["schema_version"] = f"{int(SCHEMA_VERSION.split('.')[0]) + 1}.0"
    (path / "metadata.json").write_text(json.dumps(meta, indent=2))
    with pytest.raises(BundleError, match="schema version"):
        load_bundle(path)


# ---- checkpoints and command line ---------------------------------------------------------
@pytest.mark.parametrize("key", ["task_class", "preprocessing"])
def test_foreign_checkpoint_is_refused(key, trained, tmp_path):
    checkpoint = _ckpt(trained["manufacturing"].ckpt)
    del checkpoint[key]
    path = tmp_path / "foreign.ckpt"
    torch.save(checkpoint, path)
    with pytest.raises(DataError, match="not written by a convnext-domains task run") as info:
        export.export_bundle(path, tmp_path / "bundle")
    assert str(path) in str(info.value) and key in str(info.value)
    assert [p.name for p in tmp_path.iterdir()] == ["foreign.ckpt"]


def test_cli_main(trained, tmp_path, capsys):
    ckpt, out = str(trained["manufacturing"].ckpt), str(tmp_path / "bundle")
    assert export.main(["--ckpt", ckpt, "--out", out]) == 0
    printed = capsys.readouterr().out
    assert f"bundle: {out}" in printed and "parity: max" in printed and "model.onnx" in printed
    with pytest.raises(SystemExit) as info:
        export.main(["--ckpt", ckpt, "--out", out])
    assert info.value.code == 1 and "already exists" in capsys.readouterr().err
