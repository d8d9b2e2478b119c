"""Torch-free prediction with detection bundles: one graph run per image, boxes in stored pixels.

The bundle's ``model.onnx`` takes one normalised image ``(1, C, H, W)`` at the export size and
returns ``boxes`` (xyxy, network-input pixels), ``scores`` and ``labels`` (0-based) of the
detections above the detector's ``score_thresh``, and for mask_rcnn ``masks`` (probabilities at
the network-input size; see :mod:`core.export_detection`). Here each
input is read by the bundle's reader, preprocessed by :func:`core.preprocess.to_network_input`
(as training evaluated), run, and its boxes scaled back to the pixels of the image as the
reader returns it (the stored image: ``x * stored width / network width``, likewise y); masks
are resized to that same stored grid.

Outputs (each written under a temporary name and renamed when complete):

- ``detections.json``: a COCO dataset dict. ``images`` ``[{id, file_name, width, height}]``
  (ids from 1 in input order, ``file_name`` the input path, plus the reader's non-identifying
  keys such as ``SOPInstanceUID``), ``categories`` ``[{id, name}]`` (id = class index + 1, as
  COCO counts from 1), ``annotations`` ``[{id, image_id, category_id, bbox [x, y, w, h],
  area, score, iscrowd}]`` with the detections that reach the threshold, and ``info`` (the
  threshold and where it came from). ``COCO("detections.json")`` loads it, and its
  ``annotations`` list is also what ``COCO.loadRes`` takes as results (boxes-only detectors).
  For ``mask_rcnn`` each annotation also carries ``segmentation``: the instance mask in the
  stored image's pixels (the graph's mask probabilities resized from the network size to the
  stored size, then > :data:`core.coco_rle.MASK_THRESHOLD`) as an uncompressed COCO RLE
  ``{"size": [h, w], "counts": [...]}`` (:mod:`core.coco_rle`), and ``area`` is its pixel
  count instead of the box's. ``COCO()`` and ``COCOeval`` read it as it is; ``COCO.loadRes``
  wants compressed RLE: convert each with ``pycocotools.mask.frPyObjects(seg, h, w)`` first.
  Boxes-only detectors write no ``segmentation``.
- ``detections.csv``: one row per detection the graph returned (score >= ``score_thresh``),
  ``file`` (+ reader keys), ``x0, y0, x1, y1`` (stored pixels), ``label``, ``score``, ``kept``
  (1 when the score reaches the threshold, else 0) and ``threshold``, so a user can choose
  another threshold without running again; an image without detections has one row with empty
  box, label and score, so every input appears. The box columns are those of Lightning's
  ``predict`` (:class:`core.detection_writer.DetectionFileWriter`). The CSV holds boxes only,
  never masks (they are in ``detections.json``).

numpy only (and the bundle's onnxruntime session).
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from core.atomic import write_atomic
from core.bundle import Bundle
from core.coco_rle import MASK_THRESHOLD, segmentation
from core.errors import DataError
from core.preprocess import image_hw, to_network_input
from core.readers import DETECTIONS_CSV, DETECTIONS_JSON, READERS

log = logging.getLogger(__name__)

Detections = tuple[np.ndarray, np.ndarray, np.ndarray]
# The columns after the keys, as Lightning's predict writes them (core.detection_writer).
BOX_COLUMNS = ("x0", "y0", "x1", "y1", "label", "score", "kept", "threshold")


def detect(bundle: Bundle, image: np.ndarray) -> tuple[np.ndarray, ...]:
    """Run the one-image graph on a preprocessed input ``(C, H, W)`` (normalised, the export
    size): ``boxes (N, 4)`` float32 xyxy in its pixels, ``scores (N,)``, ``labels (N,)`` int64
    and, for mask_rcnn, ``masks``. No threshold beyond the graph's ``score_thresh``."""
    expected = tuple(bundle.contract.network_shape)
    if image.shape != expected:
        raise DataError(f"a detection input must be one preprocessed image of shape {expected} "
                        f"(C, H, W), got {image.shape}")
    session = bundle.session
    name = session.get_inputs()[0].name
    outputs = session.run(None, {name: np.ascontiguousarray(image[None], dtype=np.float32)})
    boxes, scores, labels = outputs[:3]
    return (np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32).reshape(-1),
            np.asarray(labels).astype(np.int64).reshape(-1), *outputs[3:])


def detector(bundle: Bundle) -> Callable[[np.ndarray], Detections]:
    """``detect`` of :meth:`core.readers.InputReader.detect_scene`: one input -> boxes, scores, labels."""
    def run(image: np.ndarray) -> Detections:
        boxes, scores, labels = detect(bundle, image)[:3]
        return boxes, scores, labels
    return run


def score_threshold(bundle: Bundle, override: float | None) -> tuple[float, str]:
    """The score threshold detections must reach, and where it came from.

    ``override`` (``--score-threshold``) wins; else the operating threshold stored at export;
    else the detector's ``score_thresh`` (said as a warning: every returned detection counts).
    """
    if override is not None:
        if not (isinstance(override, int | float) and math.isfinite(override) and 0.0 <= override <= 1.0):
            raise DataError(f"--score-threshold {override}: a detection score threshold must be in "
                            "[0, 1], e.g. 0.5")
        return float(override), "command line"
    stored = (bundle.meta.get("decision") or {}).get("threshold")
    if stored is not None:
        return float(stored), "bundle metadata (operating threshold chosen on validation)"
    fallback = float(bundle.meta["detection"]["score_thresh"])
    log.warning("%s stores no operating threshold: keeping every detection with score >= "
                "score_thresh %g (give --score-threshold to choose)", bundle.path, fallback)
    return fallback, f"score_thresh {fallback:g}: the bundle stores no operating threshold"


def to_stored_pixels(boxes: np.ndarray, network_hw: tuple[int, int],
                     stored_hw: tuple[int, int]) -> np.ndarray:
    """Boxes xyxy in network-input pixels -> pixels of the stored image (undo the resize)."""
    (nh, nw), (sh, sw) = network_hw, stored_hw
    scale = np.array([sw / nw, sh / nh, sw / nw, sh / nh], np.float64)
    return boxes.astype(np.float64).reshape(-1, 4) * scale


def detect_files(bundle: Bundle, files: list[Path], out: Path, override: float | None,
                 read: Callable[[Path], np.ndarray]) -> dict[str, Path]:
    """Detections of every file -> ``detections.json`` (COCO) and ``detections.csv``.

    ``read`` reads one input as HWC float32 at its stored size (the bundle reader's ``read``).
    """
    meta, contract = bundle.meta, bundle.contract
    reader = READERS[contract.reader]
    names = list(meta["class_names"])
    cut, source = score_threshold(bundle, override)
    network_hw = image_hw(contract.size)
    masks_out = "masks" in meta["detection"].get("outputs", ())
    images, annotations, rows = [], [], []
    for image_id, path in enumerate(files, start=1):
        image = read(path)
        stored_hw = (int(image.shape[0]), int(image.shape[1]))
        keys = reader.input_keys(path)
        boxes, scores, labels, *rest = detect(bundle, to_network_input(image, contract.size,
                                                                       contract.mean, contract.std))
        masks = rest[0] if rest else None  # mask_rcnn: (N, 1, H, W) probabilities, network size
        boxes = to_stored_pixels(boxes, network_hw, stored_hw)
        images.append({"id": image_id, "file_name": str(path), "width": stored_hw[1],
                       "height": stored_hw[0], **keys})
        if not len(boxes):
            rows.append({"file": str(path), **keys, "threshold": cut})  # listed, nothing found
        for i, (box, score, label) in enumerate(zip(boxes, scores, labels, strict=True)):
            x0, y0, x1, y1 = (float(v) for v in box)
            kept = bool(score >= cut)
            rows.append({"file": str(path), **keys, "x0": x0, "y0": y0, "x1": x1, "y1": y1,
                         "label": names[int(label)], "score": float(score), "kept": int(kept),
                         "threshold": cut})
            if kept:
                annotation = {
                    "id": len(annotations) + 1, "image_id": image_id, "category_id": int(label) + 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0),
                    "score": float(score), "iscrowd": 0}
                if masks is not None:
                    annotation["segmentation"], annotation["area"] = segmentation(masks[i], stored_hw)
                annotations.append(annotation)
    report = {
        "info": {
            "description": "detections of a convnext-domains bundle",
            "bundle": str(bundle.path), "detector": meta["detection"]["detector"],
            "score_threshold": cut, "threshold_source": source,
            "coordinates": "pixels of each stored image (as read by the bundle's reader); bbox "
                           "is [x, y, width, height] from the top-left corner",
            "category_ids": "class index + 1",
            **({"segmentation": f"uncompressed COCO RLE in pixels of each stored image: the mask "
                                f"probabilities resized to the stored size, > {MASK_THRESHOLD:g}; "
                                "area is the mask's pixel count"} if masks_out else {}),
        },
        "images": images,
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(names)],
        "annotations": annotations,
    }
    fields = ["file", *_key_names(images), *BOX_COLUMNS]

    def write_csv(path: Path) -> None:
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)

    csv_path = write_atomic(out / DETECTIONS_CSV, write_csv)
    json_path = write_atomic(out / DETECTIONS_JSON,
                             lambda path: path.write_text(json.dumps(report, indent=2) + "\n"))
    return {"csv": csv_path, "json": json_path}


def _key_names(images: list[dict[str, Any]]) -> list[str]:
    """The reader's key columns, in the order they first appear."""
    standard = {"id", "file_name", "width", "height"}
    return list(dict.fromkeys(k for image in images for k in image if k not in standard))


def detect_scenes(bundle: Bundle, files: list[Path], out: Path, override: float | None
                  ) -> list[dict[str, Path]]:
    """Whole-scene detection of inputs of any size by the bundle reader's tiled detection."""
    reader = READERS[bundle.contract.reader]
    cut, _ = score_threshold(bundle, override)
    run = detector(bundle)
    return [reader.detect_scene(bundle, f, out, run, cut) for f in files]
