"""Bundle files without a trained model: temporary-name outputs of ``predict --bundle`` and the
seal's handling of files in subfolders. A fake ONNX session stands in for the network."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from core import predict_bundle
from core.bundle import SCHEMA_VERSION, Bundle, BundleError, load_bundle, metadata_digest, seal
from core.image_reader import IMAGE


class FakeSession:
    """Two logits per image (or per pixel): +mean and -mean of the first channel."""

    def __init__(self, segmentation: bool) -> None:
        self.segmentation = segmentation

    def get_inputs(self):
        return [SimpleNamespace(name="input")]

    def run(self, _outputs, feeds):
        x = feeds["input"][:, 0]
        if not self.segmentation:
            x = x.mean(axis=(1, 2))
        return [np.stack([x, -x], axis=1)]


def _input() -> dict:
    """A gray 8x8 image contract, as metadata.json holds it."""
    return IMAGE.contract(channels="gray", in_chans=1, image_size=8, mean=[0.5], std=[0.25],
                          class_names=["a", "b"]).to_json()


def _bundle(tmp_path: Path, segmentation: bool) -> Bundle:
    meta = {
        "schema_version": SCHEMA_VERSION,
        "task": "segmentation" if segmentation else "classification",
        "class_names": ["a", "b"], "decision": None,
        "input": _input(),
        "output": {"activation": "softmax"},
    }
    return Bundle(tmp_path / "bundle", meta, FakeSession(segmentation))


def _images(folder: Path, n: int = 3) -> list[Path]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    paths = [folder / f"img{i}.png" for i in range(n)]
    for p in paths:
        Image.fromarray(rng.integers(0, 255, (12, 12), dtype=np.uint8)).save(p)
    return paths


def test_classification_outputs_appear_only_complete(tmp_path, monkeypatch):
    bundle, files, out = _bundle(tmp_path, False), _images(tmp_path / "in"), tmp_path / "out"
    written = predict_bundle.classify(bundle, files, out, None, 2)
    assert len(list(csv.DictReader(written["csv"].open()))) == 3
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def disk_full(self, rows):
        self.writerow(rows[0])
        raise OSError("No space left on device")

    # A second run dies half-way through the CSV: the previous complete files stay as they were.
    monkeypatch.setattr(csv.DictWriter, "writerows", disk_full)
    with pytest.raises(OSError, match="No space"):
        predict_bundle.classify(bundle, files, out, 0.3, 2)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    fresh = tmp_path / "fresh"
    with pytest.raises(OSError, match="No space"):
        predict_bundle.classify(bundle, files, fresh, None, 2)
    assert list(fresh.iterdir()) == []  # no truncated predictions.csv, no temporary file


def test_mask_outputs_appear_only_complete(tmp_path, monkeypatch):
    bundle, files, out = _bundle(tmp_path, True), _images(tmp_path / "in"), tmp_path / "out"
    real_save = Image.Image.save
    calls = []

    def dies_on_second(self, fp, *args, **kwargs):
        calls.append(Path(fp))
        if len(calls) == 2:
            Path(fp).write_bytes(b"\x89PNG half")  # what a killed writer leaves
            raise OSError("simulated crash while writing")
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", dies_on_second)
    with pytest.raises(OSError, match="simulated"):
        predict_bundle.segment_images(bundle, files, out, 8)
    # The first mask is complete; the second neither exists nor left its temporary file.
    assert sorted(p.name for p in out.iterdir()) == ["img0_mask.png"]
    assert calls[0].name.startswith(".img0_mask.partial-") and calls[0].suffix == ".png"
    with Image.open(out / "img0_mask.png") as mask:
        assert mask.size == (8, 8) and set(np.unique(np.asarray(mask))) <= {0, 1}


def test_seal_covers_subfolders_and_refuses_paths_leaving_the_bundle(tmp_path):
    folder = tmp_path / "b"
    (folder / "predictor" / "core").mkdir(parents=True)
    (folder / "model.onnx").write_bytes(b"net")
    (folder / "predictor" / "core" / "x.py").write_text("A = 1\n")
    meta = seal({"schema_version": SCHEMA_VERSION, "input": _input()}, folder)
    assert set(meta["files"]) == {"model.onnx", "predictor/core/x.py"}
    (folder / "metadata.json").write_text(json.dumps(meta))
    load_bundle(folder)
    (folder / "predictor" / "core" / "x.py").write_text("A = 2\n")
    with pytest.raises(BundleError, match=r"predictor/core/x.py does not match the sha256"):
        load_bundle(folder)
    (tmp_path / "outside.txt").write_text("secret")
    for name in ("../outside.txt", "/etc/hostname", "predictor/../model.onnx", "predictor\\core\\x.py"):
        bad = {**meta, "files": {"model.onnx": meta["files"]["model.onnx"],
                                 name: hashlib.sha256(b"secret").hexdigest()}}
        bad["metadata_sha256"] = metadata_digest(bad)
        (folder / "metadata.json").write_text(json.dumps(bad))
        with pytest.raises(BundleError, match="not a file of the bundle folder"):
            load_bundle(folder)


def test_bundles_run_on_cuda_where_onnxruntime_has_it_and_on_the_cpu_otherwise():
    from core.bundle import execution_providers

    assert execution_providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert execution_providers(["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]) \
        == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert execution_providers([]) == ["CPUExecutionProvider"]


def test_atomic_outputs_get_the_umasks_permissions_not_mkstemps(tmp_path):
    """mkstemp makes its file owner-only (0600); written reports, masks and models are meant to
    be read by the rest of the team, like a file written with open()."""
    import os

    from core.atomic import write_atomic

    old = os.umask(0o022)
    try:
        out = write_atomic(tmp_path / "report.csv", lambda tmp: tmp.write_text("a,b\n"))
        plain = tmp_path / "plain.csv"
        plain.write_text("a,b\n")
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777 == 0o644
