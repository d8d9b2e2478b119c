"""Export of detection checkpoints: the one-image graph, its trace and its parity check.

torchvision's detectors post-process each image in a Python loop (box decoding, score filter,
top-k, batched NMS, ``detections_per_img``), so a trace is only valid for the image count it
was made with. ``model.onnx`` of a detection bundle therefore takes ONE image
(``(1, C, H, W)`` float32, normalised, the export size) and holds the full post-processing:
outputs ``boxes`` ``(N, 4)`` float32 xyxy in network-input pixels, ``scores`` ``(N,)``,
``labels`` ``(N,)`` int64 (0-based object classes) and, for mask_rcnn, ``masks``
``(N, 1, H, W)`` probabilities. The torch-free predictor runs it once per image
(:func:`core.predict_detection.detect`).

Parity: Lightning's ``predict`` (the task's own ``predict_step``, several images in one batch)
against ONNX Runtime one image at a time, on seeded inputs with structure (noise plus bright
and dark rectangles, so a trained detector has something to find): the same detection count
per image, labels equal, boxes and scores within tolerances; mask_rcnn's mask probabilities
(against the task's forward, as ``predict_step`` returns no masks) within the score tolerance. Detections are paired by label
and box, not by position, so two detections whose scores tie may come out in either order.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from core.bundle import Bundle
from core.errors import DataError
from core.export_parity import lightning_predict
from core.predict_detection import detect

log = logging.getLogger("core.export")

DETECTION_PARITY_INPUTS = ("seeded standard normal in normalised space with bright and dark "
                           "rectangles; one image per ONNX run, a batch in Lightning")
OUTPUTS = ("boxes", "scores", "labels")
MASKS = "masks"


def is_detection(task: nn.Module) -> bool:
    """Whether ``task`` is a :class:`~core.detection.DetectionTask` (or a domain's subclass)."""
    from core.detection import DetectionTask

    return isinstance(task, DetectionTask)


class SingleImageDetector(nn.Module):
    """``(1, C, H, W)`` -> ``boxes, scores, labels[, masks]`` of that image, as the task returns them.

    Args:
        task: the detection task in eval mode (its ``forward`` gives one dict per image).
    """

    def __init__(self, task: nn.Module) -> None:
        super().__init__()
        self.task = task
        self.masks = task.kind == "mask_rcnn"

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        found = self.task(x)[0]
        out = (found["boxes"], found["scores"], found["labels"])
        return (*out, found[MASKS]) if self.masks else out


def output_names(task: nn.Module) -> list[str]:
    """The graph's output names for ``task``."""
    return [*OUTPUTS, *([MASKS] if task.kind == "mask_rcnn" else [])]


def write_detection_onnx(task: nn.Module, path, shape: Sequence[int], opset: int = 17,
                         example: Tensor | None = None) -> None:
    """Trace the one-image graph of ``task`` to ``path`` (input ``input`` ``(1, *shape)``).

    ``example`` is the image traced (default: the first parity image, which has structure);
    the count of detections varies at run time (dynamic axis ``detections``).
    """
    if example is None:
        example = parity_images(shape, 1, seed=0)
    names = output_names(task)
    wrapper = SingleImageDetector(task).eval()
    with warnings.catch_warnings():
        # The TorchScript exporter is deliberate (see core.export_onnx); torchvision's detectors
        # trace with warnings about Python values that are constant for one image of one size.
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=".*The feature will be removed.*")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=UserWarning)
        warnings.filterwarnings("ignore", message=".*torch.jit.script. is deprecated.*")
        try:
            torch.onnx.export(
                wrapper, (example,), str(path), dynamo=False, opset_version=opset,
                input_names=["input"], output_names=names,
                dynamic_axes={name: {0: "detections"} for name in names},
            )
        except Exception as err:  # the exporter raises many types for unsupported operators
            if "more than 1 value per channel" in str(err):
                raise DataError(
                    f"the {task.kind} detector cannot run on one image of {shape[1]}x{shape[2]}: its "
                    "head's 32-group GroupNorm gets one value per group on the smallest pyramid "
                    f"level (fpn_channels={task.hparams.fpn_channels}); train with fpn_channels "
                    ">= 64 or a larger image_size to export it") from err
            raise DataError(f"cannot export the {task.kind} detector to ONNX ({type(err).__name__}: "
                            f"{err}); export fcos, retinanet or faster_rcnn, or report the "
                            "configuration") from err


# ---- parity ------------------------------------------------------------------------------------
def parity_images(shape: Sequence[int], samples: int, seed: int = 0) -> Tensor:
    """``samples`` seeded inputs ``(C, H, W)`` in normalised space: noise with rectangles.

    Pure noise rarely holds an object a trained detector would find, which would leave
    nothing to compare but the count 0; rectangles of +2.5 and -2.5 (wide and tall, at seeded
    places, 1/8 to 1/3 of the image side) give it edges and blobs.
    """
    c, h, w = (int(v) for v in shape)
    generator = torch.Generator().manual_seed(seed)
    images = 0.5 * torch.randn(samples, c, h, w, generator=generator)
    for i in range(samples):
        for k in range(3):
            long_, short = (max(2, int(s)) for s in (min(h, w) / 3, min(h, w) / 8))
            rh, rw = (short, long_) if (i + k) % 2 else (long_, short)
            y0 = int(torch.randint(0, max(1, h - rh), (1,), generator=generator))
            x0 = int(torch.randint(0, max(1, w - rw), (1,), generator=generator))
            images[i, :, y0:y0 + rh, x0:x0 + rw] += 2.5 if k != 2 else -2.5
    return images


Detections = tuple[np.ndarray, np.ndarray, np.ndarray]


def lightning_detections(task: nn.Module, images: Tensor) -> list[Detections]:
    """Per image ``(boxes, scores, labels)`` from Lightning's ``predict`` (the task's own
    ``predict_step``), all images in one batch."""
    outputs = lightning_predict(task, images)
    found: list[Detections] = []
    for out in outputs:
        for boxes, scores, labels in zip(out["boxes"], out["scores"], out["labels"], strict=True):
            found.append((boxes.numpy().reshape(-1, 4), scores.numpy().reshape(-1),
                          labels.numpy().reshape(-1).astype(np.int64)))
    return found


def pairing(expected: Detections, got: Detections) -> list[tuple[int, int]] | None:
    """Pairs ``(i, j)`` of two detection sets of equal size, by label and nearest box (greedily,
    highest expected score first); None when a detection has no partner of its label."""
    boxes, scores, labels = expected
    other_boxes, other_labels = got[0], got[2]
    free = np.ones(len(other_boxes), bool)
    pairs = []
    for i in np.argsort(-scores, kind="stable"):
        candidates = np.flatnonzero(free & (other_labels == labels[i]))
        if not len(candidates):
            return None
        j = int(candidates[int(np.argmin(np.abs(other_boxes[candidates] - boxes[i]).max(axis=1)))])
        free[j] = False
        pairs.append((int(i), j))
    return pairs


def pair_detections(expected: Detections, got: Detections) -> tuple[float, float, bool]:
    """``(largest box difference in px, largest score difference, all labels paired)`` of two
    detection sets of equal size paired by :func:`pairing`. Empty sets pair with differences 0."""
    pairs = pairing(expected, got)
    if pairs is None:
        return math.inf, math.inf, False
    box_diff = max((float(np.abs(got[0][j] - expected[0][i]).max()) for i, j in pairs), default=0.0)
    score_diff = max((float(abs(got[1][j] - expected[1][i])) for i, j in pairs), default=0.0)
    return box_diff, score_diff, True


def _mask_diff(task: nn.Module, image: Tensor, want: Detections, got: tuple[np.ndarray, ...]) -> float:
    """Largest difference of paired instance-mask probabilities (the task's forward on one image;
    Lightning's ``predict_step`` returns no masks)."""
    with torch.no_grad():
        masks = task(image[None])[0][MASKS].numpy()
    pairs = pairing(want, got[:3]) or []
    return max((float(np.abs(got[3][j] - masks[i]).max()) for i, j in pairs), default=0.0)


def check_detection_parity(task: nn.Module, bundle: Bundle, shape: Sequence[int], samples: int = 4,
                           score_tolerance: float = 1e-4, box_tolerance: float = 1e-3,
                           seed: int = 0, reference=lightning_detections) -> dict[str, Any]:
    """Compare Lightning's and ONNX Runtime's detections on seeded inputs.

    Raises:
        DataError: another detection count or label on an image, or a box or score difference
            above its tolerance; nothing is published then.
    """
    if samples < 1:
        raise DataError(f"parity_samples must be at least 1, got {samples}")
    images = parity_images(shape, samples, seed)
    expected = reference(task, images)
    box_diff = score_diff = mask_diff = 0.0
    masks = task.kind == "mask_rcnn"
    counts = []
    for i, want in enumerate(expected):
        found = detect(bundle, images[i].numpy())
        got = found[:3]
        counts.append(len(want[0]))
        if len(got[0]) != len(want[0]):
            raise DataError(
                f"export parity check failed: on seeded input {i} ONNX Runtime finds {len(got[0])} "
                f"detection(s) and PyTorch {len(want[0])}; no bundle was written. Report the "
                "model configuration (detector, score_thresh, nms_thresh)")
        boxes, scores, paired = pair_detections(want, got)
        if not paired:
            raise DataError(f"export parity check failed: on seeded input {i} ONNX Runtime and "
                            "PyTorch give other labels; no bundle was written. Report the model "
                            "configuration")
        box_diff, score_diff = max(box_diff, boxes), max(score_diff, scores)
        if masks:
            mask_diff = max(mask_diff, _mask_diff(task, images[i], want, found))
    if masks and not mask_diff <= score_tolerance:
        raise DataError(
            f"export parity check failed: ONNX Runtime and PyTorch instance-mask probabilities "
            f"differ by up to {mask_diff:.3g} (tolerance {score_tolerance:g}) on {samples} seeded "
            "inputs; no bundle was written. Report the model configuration")
    if not (box_diff <= box_tolerance and score_diff <= score_tolerance):
        raise DataError(
            f"export parity check failed: ONNX Runtime and PyTorch detections differ by up to "
            f"{box_diff:.3g} px in boxes (tolerance {box_tolerance:g}) and {score_diff:.3g} in "
            f"scores (tolerance {score_tolerance:g}) on {samples} seeded inputs; no bundle was "
            "written. Raise --box-tolerance/--tolerance only if differences this size are "
            "acceptable; otherwise report the model configuration")
    if not any(counts):
        log.warning("the detector finds nothing on the %d parity inputs: parity compared only "
                    "the detection count (0); check the bundle on real images", samples)
    return {"samples": samples, "inputs": DETECTION_PARITY_INPUTS, "detections": counts,
            "max_box_diff_px": box_diff, "max_score_diff": score_diff,
            "max_mask_diff": mask_diff if masks else None,
            "box_tolerance_px": box_tolerance, "score_tolerance": score_tolerance}


# ---- metadata ----------------------------------------------------------------------------------
def detection_info(task: nn.Module, data_hparams: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``detection`` section of metadata.json: the detector and its post-processing, and
    the tile-merge settings (``nms_iou``, ``edge_margin``) of a datamodule that has them (whole
    scenes are detected tile by tile and merged by the reader, as in training's ``predict``)."""
    h = task.hparams
    data_hparams = data_hparams or {}
    merge = ({"nms_iou": float(data_hparams["nms_iou"]), "edge_margin": float(data_hparams["edge_margin"])}
             if data_hparams.get("nms_iou") is not None and data_hparams.get("edge_margin") is not None
             else None)
    nms = task.detector.roi_heads.nms_thresh if task.kind in ("faster_rcnn", "mask_rcnn") \
        else task.detector.nms_thresh
    return {
        "detector": task.kind,
        "score_thresh": float(h.score_thresh),
        "nms_thresh": float(nms),
        "detections_per_img": int(h.detections_per_img),
        "outputs": output_names(task),
        "box_format": "xyxy in pixels of the network input",
        "labels": "0-based index into class_names",
        "images_per_run": 1,
        "tile_merge": merge,
    }


def detection_decision(task: nn.Module) -> dict[str, Any]:
    """The operating point of a detector: the score threshold chosen on validation, or None."""
    threshold = float(task.threshold)
    return {
        "threshold": threshold if math.isfinite(threshold) else None,
        "target_recall": task.hparams.target_recall,
        "rule": "a detection is kept when its score >= threshold",
        "metric_names": dict(task.operating_point_names),
    }
