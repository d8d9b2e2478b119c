"""mask_rcnn predictions carry instance masks as COCO RLE in the stored image's pixels.

Both prediction paths (the torch-free bundle predictor and Lightning's ``predict``) write them
through :mod:`core.coco_rle`; pycocotools reads what it writes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pycocotools.mask as coco_mask
import pytest
import torch
from lightning.pytorch import Trainer
from PIL import Image
from pycocotools.coco import COCO
from torch.utils.data import DataLoader

from core import export
from core.bundle import load_bundle
from core.coco_rle import MASK_THRESHOLD, rle_decode, rle_encode, segmentation, stored_mask
from core.detection import DetectionTask
from core.detection_writer import DetectionFileWriter, mask_outputs
from core.export_modules import predictor_modules
from core.image_reader import IMAGE
from core.predict_detection import detect, to_stored_pixels
from core.preprocess import read_image_file, to_network_input
from core.torch_free import run_without_torch

from .test_detection_export import (
    MEAN,
    NAMES,
    SIZE,
    STD,
    _save,
    _task,
    _write_png,
    predict_both_ways,
)

ROOT = Path(__file__).resolve().parents[1]


# ---- the RLE by hand ---------------------------------------------------------------------------
# Column-major pixels 1,0,0 | 0,1,0 | 0,1,0 | 0,0,0 -> runs: 0 zeros, 1 one, 3 zeros, 1 one,
# 2 zeros, 1 one, 4 zeros.
CORNER = np.array([[1, 0, 0, 0],
                   [0, 1, 1, 0],
                   [0, 0, 0, 0]], np.uint8)


@pytest.mark.parametrize(("mask", "counts"), [
    (CORNER, [0, 1, 3, 1, 2, 1, 4]),
    (np.array([[0, 1], [0, 1]]), [2, 2]),          # starts with zeros: no leading 0
    (np.ones((2, 3), bool), [0, 6]),                # all set
    (np.zeros((3, 2), np.float32), [6]),            # empty
    (np.array([[0, 0, 0, 1]]), [3, 1]),             # one row: column-major = left to right
])
def test_rle_by_hand_and_pycocotools_reads_it(mask, counts):
    rle = rle_encode(mask)
    assert rle == {"size": list(mask.shape), "counts": counts}
    assert all(type(c) is int for c in rle["counts"]) and json.loads(json.dumps(rle)) == rle
    h, w = mask.shape
    compressed = coco_mask.frPyObjects(rle, h, w)
    assert np.array_equal(coco_mask.decode(compressed), mask != 0)
    # The compressed form pycocotools makes from ours is the one it makes from the mask itself.
    assert compressed == coco_mask.encode(np.asfortranarray(mask != 0, dtype=np.uint8))
    assert int(coco_mask.area(compressed)) == int((mask != 0).sum())
    assert np.array_equal(rle_decode(rle), mask != 0)


def test_rle_refuses_what_it_cannot_encode_or_decode():
    with pytest.raises(ValueError, match="must be 2-D"):
        rle_encode(np.zeros((1, 2, 2)))
    with pytest.raises(ValueError, match="compressed COCO RLE"):
        rle_decode({"size": [2, 2], "counts": "04"})
    with pytest.raises(ValueError, match="sum to 3, not height\\*width = 4"):
        rle_decode({"size": [2, 2], "counts": [1, 2]})


def test_masks_are_binarised_above_one_half_after_resizing_to_the_stored_grid():
    assert MASK_THRESHOLD == 0.5
    # Same size: exactly 0.5 is out, just above is in.
    probs = np.array([[[0.5, 0.51], [0.49, 1.0]]], np.float32)
    assert stored_mask(probs, (2, 2)).tolist() == [[False, True], [False, True]]
    # Network 4x4 with the left half 1, stored 8 high x 8 wide: output column x samples the
    # network at (x + 0.5) / 2 - 0.5; column 3 at 1.25 -> 0.75 (in), column 4 at 1.75 -> 0.25
    # (out), so the left 4 columns are set.
    half = np.zeros((4, 4), np.float32)
    half[:, :2] = 1.0
    rle, area = segmentation(half, (8, 8))
    assert area == 32 and rle == {"size": [8, 8], "counts": [0, 32, 32]}
    # Another aspect: stored 6 high x 12 wide keeps the left half (6 of 12 columns).
    mask = stored_mask(half, (6, 12))
    assert mask.shape == (6, 12) and mask[:, :6].all() and not mask[:, 6:].any()


# ---- a tiny mask_rcnn, exported and predicted --------------------------------------------------
def _box_shaped_masks(task: DetectionTask) -> DetectionTask:
    """Mask logits of +4 everywhere (weights 0): each mask is its box (probability 0.98 inside,
    fading at the pasted edges), so where a mask lies checks the grid it is written in."""
    logits = task.detector.roi_heads.mask_predictor.mask_fcn_logits
    with torch.no_grad():
        logits.weight.zero_()
        logits.bias.fill_(4.0)
    return task


def _expected_mask(probs: np.ndarray, stored_hw: tuple[int, int]) -> np.ndarray:
    """The graph's mask probabilities resized to the stored size (PIL bilinear), > 0.5."""
    h, w = stored_hw
    image = Image.fromarray(np.ascontiguousarray(probs.reshape(probs.shape[-2:]), np.float32), mode="F")
    return np.asarray(image.resize((w, h), Image.Resampling.BILINEAR)) > 0.5


@pytest.fixture(scope="module")
def mask_rcnn(tmp_path_factory) -> dict:
    """A mask_rcnn bundle of 64 px inputs and two PNGs: 128 wide x 96 high (the stored grid is
    not the network's) and 64 x 64."""
    tmp = tmp_path_factory.mktemp("mask_rcnn")
    inputs = tmp / "inputs"
    inputs.mkdir()
    _write_png(inputs / "a_wide.png", 128, 96, seed=1)
    _write_png(inputs / "b_square.png", 64, 64, seed=2)
    contract = IMAGE.contract(channels="rgb", in_chans=3, image_size=SIZE, mean=MEAN, std=STD,
                              class_names=NAMES)
    task = _box_shaped_masks(_task("mask_rcnn"))
    bundle = export.export_bundle(_save(task, contract, tmp / "m.ckpt"), tmp / "bundle")
    return {"bundle": bundle, "task": task, "inputs": inputs, "tmp": tmp}


def _mask_bbox(mask: np.ndarray) -> list[int]:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1]


def test_predict_bundle_writes_segmentations_in_stored_pixels(mask_rcnn, tmp_path):
    out = tmp_path / "out"
    result = run_without_torch(["predict", "--bundle", str(mask_rcnn["bundle"]), str(mask_rcnn["inputs"]),
                                "--out", str(out), "--score-threshold", "0"], cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "detections.json").read_text())
    assert "uncompressed COCO RLE" in report["info"]["segmentation"]
    bundle = load_bundle(mask_rcnn["bundle"])
    for image in report["images"]:
        stored_hw = (image["height"], image["width"])
        pixels = read_image_file(image["file_name"], "rgb")
        assert pixels.shape[:2] == stored_hw
        boxes, _, labels, masks = detect(bundle, to_network_input(pixels, SIZE, MEAN, STD))
        mine = [a for a in report["annotations"] if a["image_id"] == image["id"]]
        assert len(mine) == len(boxes) > 0  # threshold 0: every detection of the graph, in order
        stored_boxes = to_stored_pixels(boxes, (SIZE, SIZE), stored_hw)
        for a, probs, box, label in zip(mine, masks, stored_boxes, labels, strict=True):
            assert a["category_id"] == int(label) + 1
            seg = a["segmentation"]
            assert seg["size"] == [image["height"], image["width"]]
            decoded = coco_mask.decode(coco_mask.frPyObjects(seg, *stored_hw)).astype(bool)
            assert np.array_equal(decoded, _expected_mask(probs, stored_hw))
            assert a["area"] == int(decoded.sum()) > 0
            # The box-shaped mask lies on the reported box, in the same (stored) grid: on the
            # wide image x doubles and y grows by 1.5 from the network's.
            assert np.abs(np.array(_mask_bbox(decoded)) - box).max() <= 3.0
    # COCO tools read the file as a dataset, segmentations included.
    coco = COCO(str(out / "detections.json"))
    first = coco.loadAnns(coco.getAnnIds(imgIds=[1]))[0]
    assert coco.annToMask(first).shape == (96, 128) and int(coco.annToMask(first).sum()) == first["area"]
    csv_header = (out / "detections.csv").read_text().splitlines()[0]
    assert "segmentation" not in csv_header and "area" not in csv_header


def test_the_bundles_own_predictor_carries_the_rle_helper(mask_rcnn, tmp_path):
    assert "core.coco_rle" in predictor_modules("image")
    assert (mask_rcnn["bundle"] / "predictor" / "core" / "coco_rle.py").is_file()
    cli, own_dir = predict_both_ways(mask_rcnn["bundle"], mask_rcnn["inputs"], tmp_path)
    own = json.loads((own_dir / "detections.json").read_text())["annotations"]
    assert own == json.loads((cli / "detections.json").read_text())["annotations"]
    assert own and all("segmentation" in a for a in own)


def test_boxes_only_bundles_write_no_segmentation(tmp_path):
    contract = IMAGE.contract(channels="rgb", in_chans=3, image_size=SIZE, mean=MEAN, std=STD,
                              class_names=NAMES)
    bundle = export.export_bundle(_save(_task("faster_rcnn"), contract, tmp_path / "f.ckpt"),
                                  tmp_path / "bundle")
    _write_png(tmp_path / "a.png", 128, 96, seed=1)
    out = tmp_path / "out"
    result = run_without_torch(["predict", "--bundle", str(bundle), str(tmp_path / "a.png"),
                                "--out", str(out), "--score-threshold", "0"], cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "detections.json").read_text())
    assert report["annotations"] and "segmentation" not in report["info"]
    for a in report["annotations"]:
        assert "segmentation" not in a
        assert a["area"] == pytest.approx(a["bbox"][2] * a["bbox"][3])


# ---- Lightning predict ------------------------------------------------------------------------
def _lightning_predict(task: DetectionTask, batch: dict, root: Path) -> list[dict]:
    trainer = Trainer(accelerator="cpu", logger=True, enable_progress_bar=False,
                      enable_checkpointing=False, default_root_dir=root)
    trainer.predict(task, dataloaders=DataLoader([batch], batch_size=None))
    return json.loads((Path(trainer.log_dir) / "detections.json").read_text())["images"]


def _batch(folder: Path) -> dict:
    """One batch of two network-sized inputs whose stored images are 128x96 and 64x64."""
    pngs = [_write_png(folder / "w.png", 128, 96, seed=1), _write_png(folder / "s.png", 64, 64, seed=2)]
    images = torch.stack([torch.from_numpy(to_network_input(read_image_file(p, "rgb"), SIZE, MEAN, STD))
                          for p in pngs])
    return {"image": images, "id": ["wide", "square"], "orig_size": torch.tensor([[96, 128], [64, 64]])}


def test_lightning_predict_writes_segmentations_in_stored_pixels(mask_rcnn, tmp_path):
    task = DetectionTask(**mask_rcnn["task"].hparams)
    task.load_state_dict(mask_rcnn["task"].state_dict())
    task.eval()
    batch = _batch(tmp_path)
    with torch.no_grad():
        expected = task(batch["image"])
    images = _lightning_predict(task, batch, tmp_path)
    assert [i["size"] for i in images] == [[96, 128], [64, 64]]
    for image, want in zip(images, expected, strict=True):
        found = image["detections"]
        assert len(found) == len(want["boxes"]) > 0
        for d, probs in zip(found, want["masks"].numpy(), strict=True):
            h, w = image["size"]
            decoded = coco_mask.decode(coco_mask.frPyObjects(d["segmentation"], h, w)).astype(bool)
            assert np.array_equal(decoded, _expected_mask(probs, (h, w)))
            assert d["area"] == int(decoded.sum()) > 0
            assert np.abs(np.array(_mask_bbox(decoded)) - np.array(d["box"])).max() <= 3.0
    csv_header = (tmp_path / "lightning_logs" / "version_0" / "detections.csv").read_text().splitlines()[0]
    assert "segmentation" not in csv_header and "area" not in csv_header


def test_lightning_predict_of_boxes_only_detectors_writes_no_segmentation(tmp_path):
    task = _task("faster_rcnn")
    batch = _batch(tmp_path)
    with torch.no_grad():
        assert mask_outputs(task(batch["image"])) == {}
    found = [d for image in _lightning_predict(task, batch, tmp_path) for d in image["detections"]]
    assert found and all("segmentation" not in d and "area" not in d for d in found)


def test_the_writer_drops_masks_once_encoded(tmp_path):
    class Trainer_:
        world_size, log_dir = 1, str(tmp_path)

    writer = DetectionFileWriter()
    writer.on_predict_start(Trainer_(), None)
    masks = torch.zeros(1, 4, 4)
    masks[0, :, :2] = 1.0  # network 4x4, left half; stored 8x8 -> left 4 columns (see above)
    prediction = {"id": ["a"], "class_names": ["x"], "threshold": 0.5, "boxes": [torch.tensor([[0.0, 0, 2, 4]])],
                  "scores": [torch.tensor([0.9])], "labels": [torch.tensor([0])],
                  "kept": [torch.tensor([True])], "masks": [masks]}
    writer.write_on_batch_end(Trainer_(), None, prediction, None,
                              {"image": torch.zeros(1, 3, 4, 4), "orig_size": torch.tensor([[8, 8]])}, 0, 0)
    assert prediction["masks"] is None
    (d,) = writer.images[0]["detections"]
    assert d["segmentation"] == {"size": [8, 8], "counts": [0, 32, 32]} and d["area"] == 32
    assert d["box"] == [0.0, 0.0, 4.0, 8.0]
