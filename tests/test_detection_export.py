"""Detection bundles: export of torchvision detectors on the ConvNeXt pyramid to a one-image ONNX
graph with its post-processing, parity with Lightning, and torch-free prediction (COCO JSON and
CSV in stored-image pixels, the score threshold, DICOM keys without identifiers).

The detectors are tiny and seeded, not trained: an untrained fcos or faster_rcnn returns
detections of distinct scores above score_thresh on the structured parity inputs, an untrained
retinanet (focal prior 0.01 < score_thresh 0.05) returns none, which is the N=0 case.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core import export, export_detection
from core.bundle import SCHEMA_VERSION, Bundle, load_bundle
from core.bundle_verify import verify_bundle
from core.detection import DetectionTask
from core.errors import DataError
from core.export_detection import check_detection_parity, pair_detections, parity_images
from core.image_reader import IMAGE
from core.predict_detection import detect, detect_scenes, to_stored_pixels
from core.preprocess import read_image_file, to_network_input
from core.readers import InputReader, contract_json
from core.torch_free import BLOCKED, run_without_torch
from domains.medical.plugin import DICOM

from .conftest import TINY
from .dicom_helpers import PATIENT, write_dicom

ROOT = Path(__file__).resolve().parents[1]
OLD = ROOT / "tests" / "fixtures" / "bundle_schema_1_0"
# Written by the 2.0 layout, before detection bundles (tests/fixtures/make_bundle_schema_2_0.py).
V2_0 = ROOT / "tests" / "fixtures" / "bundle_schema_2_0"
NAMES = ["wide", "tall"]
SIZE = 64
MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]


def _task(kind: str, in_chans: int = 3) -> DetectionTask:
    torch.manual_seed(0)
    # fcos: 64 FPN channels, so its 32-group GroupNorm has 2 values per group on the 1x1 P7 of
    # one 64 px image (32 channels would have 1, which torch refuses).
    return DetectionTask(detector=kind, num_classes=2, class_names=NAMES, in_chans=in_chans,
                         detections_per_img=20, **{**TINY, "drop_path_rate": 0.0,
                                                   "fpn_channels": 64 if kind == "fcos" else 32}).eval()


def _save(task: DetectionTask, contract, path: Path) -> Path:
    torch.save({"task_class": "core.detection.DetectionTask", "hyper_parameters": dict(task.hparams),
                "state_dict": task.state_dict(), "preprocessing": contract_json(contract, SCHEMA_VERSION),
                "preprocessing_schema": SCHEMA_VERSION}, path)
    return path


def _torch_detections(task: DetectionTask, image: np.ndarray) -> tuple[np.ndarray, ...]:
    with torch.no_grad():
        found = task(torch.from_numpy(image)[None])[0]
    return found["boxes"].numpy(), found["scores"].numpy(), found["labels"].numpy()


def _write_png(path: Path, width: int, height: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(60, 120, (height, width, 3), dtype=np.uint8)
    pixels[height // 4: height // 2, width // 8: width // 2] = 230  # a wide bright block
    pixels[height // 2: height - 4, 3 * width // 4: 3 * width // 4 + width // 10] = 20  # a tall dark one
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture(scope="module")
def fcos(tmp_path_factory) -> dict:
    """An fcos bundle of an image reader whose stored threshold is the median score of the
    first (128 wide x 96 high) input, and the inputs it predicts on."""
    tmp = tmp_path_factory.mktemp("fcos")
    inputs = tmp / "inputs"
    inputs.mkdir()
    wide = _write_png(inputs / "a_wide.png", 128, 96, seed=1)
    square = _write_png(inputs / "b_square.png", 64, 64, seed=2)
    contract = IMAGE.contract(channels="rgb", in_chans=3, image_size=SIZE, mean=MEAN, std=STD,
                              class_names=NAMES)
    task = _task("fcos")
    network = {p.name: to_network_input(read_image_file(p, "rgb"), SIZE, MEAN, STD) for p in (wide, square)}
    expected = {name: _torch_detections(task, image) for name, image in network.items()}
    threshold = float(np.median(expected["a_wide.png"][1]))
    task.threshold.fill_(threshold)
    bundle = export.export_bundle(_save(task, contract, tmp / "fcos.ckpt"), tmp / "bundle")
    return {"bundle": bundle, "task": task, "inputs": inputs, "expected": expected,
            "threshold": float(task.threshold), "tmp": tmp}


def _meta(bundle: Path) -> dict:
    return json.loads((bundle / "metadata.json").read_text())


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


# ---- export --------------------------------------------------------------------------------
def test_fcos_bundle_metadata_parity_and_card(fcos):
    meta = _meta(fcos["bundle"])
    assert meta["schema_version"] == SCHEMA_VERSION and meta["task"] == "detection"
    assert meta["class_names"] == NAMES
    assert meta["detection"] == {
        "detector": "fcos", "score_thresh": 0.05, "nms_thresh": 0.6, "detections_per_img": 20,
        "outputs": ["boxes", "scores", "labels"], "box_format": "xyxy in pixels of the network input",
        "labels": "0-based index into class_names", "images_per_run": 1,
        "tile_merge": None}  # an image datamodule: no tile merge
    assert meta["decision"]["threshold"] == pytest.approx(fcos["threshold"])
    assert meta["decision"]["target_recall"] == 0.9
    parity = meta["parity"]
    assert parity["samples"] == 4 and len(parity["detections"]) == 4 and all(parity["detections"])
    assert 0 <= parity["max_box_diff_px"] <= 1e-3 and 0 <= parity["max_score_diff"] <= 1e-4
    assert (parity["box_tolerance_px"], parity["score_tolerance"]) == (1e-3, 1e-4)
    assert parity["max_mask_diff"] is None
    assert verify_bundle(fcos["bundle"]).json_schema
    card = (fcos["bundle"] / "README.md").read_text()
    assert "detection of 2 object classes (fcos" in card and "ONE image per run" in card
    assert "--score-threshold T" in card and "detections.json" in card
    assert f"{parity['max_box_diff_px']:.3g} px" in card


def test_onnx_graph_gives_the_tasks_detections_one_image_at_a_time(fcos):
    bundle = load_bundle(fcos["bundle"])
    for i, image in enumerate(parity_images((3, SIZE, SIZE), 2, seed=7)):
        want = _torch_detections(fcos["task"], image.numpy())
        got = detect(bundle, image.numpy())
        assert len(got[0]) == len(want[0]) > 0, i
        boxes, scores, paired = pair_detections(want, got[:3])
        assert paired and boxes <= 1e-3 and scores <= 1e-4
    with pytest.raises(DataError, match=r"shape \(3, 64, 64\)"):
        detect(bundle, np.zeros((1, 3, SIZE, SIZE), np.float32))


def test_pairing_ignores_the_order_of_tied_scores_and_pairs_empty_sets():
    boxes = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32)
    scores, labels = np.array([0.5, 0.5], np.float32), np.array([0, 1])
    swapped = (boxes[::-1] + 1e-4, scores[::-1], labels[::-1])
    assert pair_detections((boxes, scores, labels), swapped) == pytest.approx((1e-4, 0.0, True), abs=1e-6)
    other_label = (boxes, scores, np.array([1, 1]))
    assert pair_detections((boxes, scores, labels), other_label)[2] is False
    empty = (np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))
    assert pair_detections(empty, empty) == (0.0, 0.0, True)


def test_parity_failures_name_the_difference(fcos):
    bundle = load_bundle(fcos["bundle"])

    def shifted(task, images):
        return [(b + 0.01, s, lab) for b, s, lab in export_detection.lightning_detections(task, images)]

    def one_more(task, images):
        found = export_detection.lightning_detections(task, images)
        b, s, lab = found[0]
        return [(np.vstack([b, b[:1]]), np.append(s, s[0]), np.append(lab, lab[0])), *found[1:]]

    with pytest.raises(DataError, match=r"differ by up to 0\.01 px in boxes \(tolerance 0\.001\)"):
        check_detection_parity(fcos["task"], bundle, (3, SIZE, SIZE), 2, reference=shifted)
    with pytest.raises(DataError, match=r"on seeded input 0 ONNX Runtime finds \d+ detection\(s\) and PyTorch \d+"):
        check_detection_parity(fcos["task"], bundle, (3, SIZE, SIZE), 2, reference=one_more)


def test_a_failed_detection_parity_writes_no_bundle(fcos, tmp_path, monkeypatch):
    monkeypatch.setattr("core.export_detection.pair_detections", lambda want, got: (1.0, 0.0, True))
    with pytest.raises(DataError, match="export parity check failed"):
        export.export_bundle(fcos["tmp"] / "fcos.ckpt", tmp_path / "bundle")
    assert list(tmp_path.iterdir()) == []


def test_retinanet_without_detections_exports_and_predicts_nothing(fcos, tmp_path, caplog, capsys):
    """Untrained retinanet scores sit at the focal prior 0.01, below score_thresh: N=0."""
    contract = IMAGE.contract(channels="rgb", in_chans=3, image_size=SIZE, mean=MEAN, std=STD,
                              class_names=NAMES)
    task = _task("retinanet")  # no threshold chosen (NaN): predict falls back to score_thresh
    bundle = tmp_path / "bundle"
    with caplog.at_level("WARNING", logger="core.export"):
        assert export.main(["--ckpt", str(_save(task, contract, tmp_path / "r.ckpt")),
                            "--out", str(bundle)]) == 0
    assert "finds nothing on the 4 parity inputs" in caplog.text
    printed = capsys.readouterr().out
    assert "parity: 0 detection(s) on 4 seeded inputs, same count and labels" in printed
    assert "max box difference 0 px (tolerance 0.001)" in printed
    meta = _meta(bundle)
    assert meta["parity"]["detections"] == [0, 0, 0, 0]
    assert (meta["parity"]["max_box_diff_px"], meta["parity"]["max_score_diff"]) == (0.0, 0.0)
    assert meta["decision"]["threshold"] is None and meta["detection"]["detector"] == "retinanet"
    assert "only the count was compared" in (bundle / "README.md").read_text()
    found = detect(load_bundle(bundle), parity_images((3, SIZE, SIZE), 1)[0].numpy())
    assert [a.shape for a in found] == [(0, 4), (0,), (0,)]
    result = run_without_torch(["predict", "--bundle", str(bundle), str(fcos["inputs"]), "--out",
                                str(tmp_path / "out")], cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert report["annotations"] == [] and len(report["images"]) == 2
    assert report["info"]["threshold_source"].startswith("score_thresh 0.05")
    assert "stores no operating threshold" in result.stderr
    rows = _csv(tmp_path / "out" / "detections.csv")  # every input listed, with nothing found
    assert [Path(r["file"]).name for r in rows] == ["a_wide.png", "b_square.png"]
    assert all(r["label"] == r["score"] == r["x0"] == r["kept"] == "" for r in rows)


def test_mask_rcnn_exports_masks_with_parity(tmp_path):
    contract = IMAGE.contract(channels="rgb", in_chans=3, image_size=SIZE, mean=MEAN, std=STD,
                              class_names=NAMES)
    task = _task("mask_rcnn")
    bundle = export.export_bundle(_save(task, contract, tmp_path / "m.ckpt"), tmp_path / "bundle")
    meta = _meta(bundle)
    assert meta["detection"]["outputs"] == ["boxes", "scores", "labels", "masks"]
    assert all(meta["parity"]["detections"]) and 0 <= meta["parity"]["max_mask_diff"] <= 1e-4
    image = parity_images((3, SIZE, SIZE), 1, seed=5)[0]
    boxes, scores, labels, masks = detect(load_bundle(bundle), image.numpy())
    with torch.no_grad():
        want = task(image[None])[0]
    assert masks.shape == (len(boxes), 1, SIZE, SIZE) and len(boxes) == len(want["boxes"]) > 0
    assert "COCO RLE `segmentation`s in detections.json" in (bundle / "README.md").read_text()


# ---- torch-free prediction -------------------------------------------------------------------
def test_boxes_go_back_to_stored_pixels_by_hand():
    # Network 64x64, stored 96 high x 128 wide: x doubles, y grows by 1.5.
    got = to_stored_pixels(np.array([[10, 20, 30, 40]], np.float32), (64, 64), (96, 128))
    assert got.tolist() == [[20.0, 30.0, 60.0, 60.0]]


def test_predict_without_torch_writes_coco_json_and_csv_in_stored_pixels(fcos, tmp_path):
    out = tmp_path / "out"
    result = run_without_torch(["predict", "--bundle", str(fcos["bundle"]), str(fcos["inputs"]),
                                "--out", str(out)], cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "detections.json").read_text())
    rows = _csv(out / "detections.csv")
    assert report["categories"] == [{"id": 1, "name": "wide"}, {"id": 2, "name": "tall"}]
    wide, square = report["images"]
    assert (wide["id"], wide["width"], wide["height"]) == (1, 128, 96)
    assert wide["file_name"].endswith("a_wide.png") and (square["width"], square["height"]) == (64, 64)
    threshold = fcos["threshold"]
    assert report["info"]["score_threshold"] == pytest.approx(threshold)
    for image, scale in ((wide, [2.0, 1.5, 2.0, 1.5]), (square, [1.0, 1.0, 1.0, 1.0])):
        boxes, scores, labels = fcos["expected"][Path(image["file_name"]).name]
        mine = [r for r in rows if r["file"] == image["file_name"]]
        assert len(mine) == len(boxes) > 0
        got = (np.array([[float(r[k]) for k in ("x0", "y0", "x1", "y1")] for r in mine]),
               np.array([float(r["score"]) for r in mine]),
               np.array([NAMES.index(r["label"]) for r in mine]))
        box_diff, score_diff, paired = pair_detections((boxes * np.array(scale), scores, labels), got)
        assert paired and box_diff < 1e-3 and score_diff < 1e-4
        assert all((r["kept"] == "1") == (float(r["score"]) >= threshold) for r in mine)
        assert all(float(r["threshold"]) == pytest.approx(threshold) for r in mine)
        kept = [a for a in report["annotations"] if a["image_id"] == image["id"]]
        assert len(kept) == int(np.sum(scores >= threshold - 1e-6)) or len(kept) == int(np.sum(scores >= threshold + 1e-6))
        for a in kept:
            x, y, w, h = a["bbox"]
            assert a["score"] >= threshold and a["category_id"] in (1, 2) and a["iscrowd"] == 0
            assert a["area"] == pytest.approx(w * h) and 0 <= x and x + w <= image["width"] + 1e-3
    # The median score of the first image: about half its detections reach the threshold.
    first = [a for a in report["annotations"] if a["image_id"] == 1]
    assert 0 < len(first) < len([r for r in rows if r["file"] == wide["file_name"]])
    assert not list(out.glob(".*partial*"))


def test_score_threshold_overrides_and_bad_values_are_refused(fcos, tmp_path):
    result = run_without_torch(["predict", "--bundle", str(fcos["bundle"]), str(fcos["inputs"]),
                                "--out", str(tmp_path / "all"), "--score-threshold", "0"], cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "all" / "detections.json").read_text())
    assert report["info"]["threshold_source"] == "command line" and report["info"]["score_threshold"] == 0
    found = [r for r in _csv(tmp_path / "all" / "detections.csv") if r["label"]]
    assert len(report["annotations"]) == len(found) and all(r["kept"] == "1" for r in found)
    for bad in ("1.5", "-0.1", "nan"):
        result = run_without_torch(["predict", "--bundle", str(fcos["bundle"]), str(fcos["inputs"]),
                                    "--out", str(tmp_path / "bad"), "--score-threshold", bad], cwd=ROOT)
        assert result.returncode == 2 and f"error: --score-threshold {bad}" in result.stderr
        assert "must be in [0, 1]" in result.stderr and not (tmp_path / "bad").exists()
    result = run_without_torch(["predict", "--bundle", str(fcos["bundle"]), str(fcos["inputs"]),
                                "--out", str(tmp_path / "bad"), "--threshold", "0.5"], cwd=ROOT)
    assert result.returncode == 2 and "give --score-threshold" in result.stderr


_OWN_LAUNCHER = """
import importlib.abc, runpy, sys
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ImportError(name + " is blocked")
sys.meta_path.insert(0, _Block())
sys.argv = {argv!r}
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def predict_both_ways(bundle: Path, inputs: Path, tmp_path: Path) -> tuple[Path, Path]:
    """Output folders of ``predict --bundle`` and of the bundle's own ``predict.py``, both with
    torch unimportable; the latter outside the checkout, so only its predictor/ copy imports."""
    cli = tmp_path / "cli"
    assert run_without_torch(["predict", "--bundle", str(bundle), str(inputs), "--out", str(cli)],
                             cwd=ROOT).returncode == 0
    argv = [str(bundle / "predict.py"), str(inputs), "--out", str(tmp_path / "own")]
    result = subprocess.run([sys.executable, "-c", _OWN_LAUNCHER.format(blocked=set(BLOCKED), argv=argv)],
                            cwd=tmp_path, capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-3000:]
    return cli, tmp_path / "own"


def test_the_bundles_own_predict_py_writes_the_same_detections(fcos, tmp_path):
    cli, own_dir = predict_both_ways(fcos["bundle"], fcos["inputs"], tmp_path)
    assert _csv(own_dir / "detections.csv") == _csv(cli / "detections.csv")
    own = json.loads((own_dir / "detections.json").read_text())
    assert own["annotations"] == json.loads((cli / "detections.json").read_text())["annotations"]


# ---- whole scenes: the hook tiled readers implement ---------------------------------------------
class SceneReader(InputReader):
    """A tiled test reader: its scene detection runs ``detect`` on the top-left network-sized
    tile of an image and records what it got."""

    name = "tests.test_detection_export:SCENE_READER"
    extensions = (".png",)
    tiled = True
    scene_detection = True

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def read(self, path, contract):
        return read_image_file(path, "rgb")

    def detect_scene(self, bundle, path, out, detect, score_threshold):
        c = bundle.contract
        tile = to_network_input(self.read(path, c)[:SIZE, :SIZE], SIZE, c.mean, c.std)
        self.calls.append({"path": path, "found": detect(tile), "threshold": score_threshold})
        return {"scene": out / f"{Path(path).stem}.json"}


SCENE_READER = SceneReader()


def test_tiled_readers_of_detection_bundles_get_detect_scene(fcos, tmp_path):
    bundle = load_bundle(fcos["bundle"])
    contract = SCENE_READER.contract(in_chans=3, image_size=SIZE, mean=MEAN, std=STD, class_names=NAMES)
    scene_bundle = Bundle(bundle.path, bundle.meta, _contract=contract)
    files = sorted(fcos["inputs"].glob("*.png"))
    written = detect_scenes(scene_bundle, files, tmp_path, override=None)
    assert written == [{"scene": tmp_path / "a_wide.json"}, {"scene": tmp_path / "b_square.json"}]
    square = SCENE_READER.calls[1]
    assert square["threshold"] == pytest.approx(fcos["threshold"])
    boxes, scores, labels = square["found"]  # the whole 64x64 image is the tile: no scaling
    want = fcos["expected"]["b_square.png"]
    assert len(boxes) == len(want[0]) and pair_detections(want, (boxes, scores, labels))[0] < 1e-3
    assert labels.dtype == np.int64 and boxes.shape[1] == 4
    assert detect_scenes(scene_bundle, files[:1], tmp_path, override=0.25)[0]
    assert SCENE_READER.calls[-1]["threshold"] == 0.25


def test_readers_without_scene_detection_say_so(tmp_path):
    with pytest.raises(DataError, match="input reader 'image' has no tiled scene detection"):
        IMAGE.detect_scene(None, tmp_path / "x.png", tmp_path, lambda tile: None, 0.5)


# ---- DICOM -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dicom(tmp_path_factory) -> dict:
    """A one-channel faster_rcnn bundle with the DICOM reader, and two CT slices that carry
    patient identifiers (written as a vendor would, with plain pydicom)."""
    tmp = tmp_path_factory.mktemp("dicom")
    slices = tmp / "slices"
    slices.mkdir()
    rng = np.random.default_rng(0)
    uids = {}
    for i in range(2):
        hu = rng.normal(40, 30, (48, 64))
        hu[10:20, 8:40] = 400 + 100 * i
        uid = f"1.2.826.0.1.3680043.8.498.{1000 + i}"
        write_dicom(slices / f"s{i}.dcm", (hu + 1024).astype(np.uint16), SOPInstanceUID=uid,
                    RescaleSlope=1, RescaleIntercept=-1024, **PATIENT)
        uids[str(slices / f"s{i}.dcm")] = uid
    contract = DICOM.contract(in_chans=1, image_size=SIZE, mean=[0.0], std=[1.0], window=[40, 400],
                              class_names=NAMES)
    task = _task("faster_rcnn", in_chans=1)
    bundle = export.export_bundle(_save(task, contract, tmp / "d.ckpt"), tmp / "bundle")
    out = tmp / "out"
    result = run_without_torch(["predict", "--bundle", str(bundle), str(slices), "--out", str(out)],
                               cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return {"bundle": bundle, "out": out, "uids": uids}


def test_dicom_detections_are_keyed_by_path_without_patient_identifiers(dicom):
    parity = _meta(dicom["bundle"])["parity"]  # faster_rcnn on one channel
    assert any(parity["detections"]) and parity["max_box_diff_px"] <= 1e-3
    out = dicom["out"]
    report = json.loads((out / "detections.json").read_text())
    assert [i["file_name"] for i in report["images"]] == sorted(dicom["uids"])
    assert all((i["width"], i["height"]) == (64, 48) for i in report["images"])
    rows = _csv(out / "detections.csv")
    assert {r["file"] for r in rows} == set(dicom["uids"])
    text = (out / "detections.csv").read_text() + (out / "detections.json").read_text()
    for value in PATIENT.values():
        assert value not in text


def test_dicom_detections_carry_the_sop_instance_uid(dicom):
    report = json.loads((dicom["out"] / "detections.json").read_text())
    assert {i["file_name"]: i.get("sop_instance_uid") for i in report["images"]} == dicom["uids"]
    rows = _csv(dicom["out"] / "detections.csv")
    assert all(r["sop_instance_uid"] == dicom["uids"][r["file"]] for r in rows)


# ---- older bundles ---------------------------------------------------------------------------
def test_schema_1_0_bundles_still_load_and_verify():
    bundle = load_bundle(OLD / "bundle")
    assert bundle.meta["schema_version"] == "1.0" and bundle.meta["task"] == "classification"
    assert verify_bundle(OLD / "bundle").schema_version == "1.0"


def test_schema_2_0_bundles_still_verify_and_predict_without_torch(tmp_path):
    """A 2.0 bundle is checked against its own sealed JSON Schema (which knows no detection
    key) and predicts what the 2.0 predictor wrote."""
    checked = verify_bundle(V2_0 / "bundle")
    assert (checked.schema_version, checked.json_schema) == ("2.0", True)
    assert "detection" not in load_bundle(V2_0 / "bundle").meta
    result = run_without_torch(["predict", "--bundle", str(V2_0 / "bundle"), str(V2_0 / "inputs"),
                                "--out", str(tmp_path)], cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    got = {Path(r["id"]).name: r for r in _csv(tmp_path / "predictions.csv")}
    expected = {Path(r["id"]).name: r for r in _csv(V2_0 / "expected.csv")}
    assert sorted(got) == sorted(expected) == ["good_0.png", "scratch_0.png"]
    for name, row in expected.items():
        assert float(got[name]["prob_scratch"]) == pytest.approx(float(row["prob_scratch"]), abs=1e-6)
        assert (got[name]["predicted_class"], got[name]["decision"]) == (row["predicted_class"], row["decision"])
