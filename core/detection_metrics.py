"""Detection metrics: COCO mAP (torchmetrics + pycocotools), object matching, operating points.

Conventions: boxes are ``xyxy`` in pixels, labels 0-based object classes, and a detection is
kept when ``score >= threshold`` (as every operating point in this project).
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics.detection import MeanAveragePrecision
from torchvision.ops import box_iou

from core import operating_point as op

MATCH_IOU = 0.5
# The summary values of torchmetrics' result that are logged (the rest are per-size breakdowns
# that are -1 on most small data sets, or tensors).
SUMMARY = ("map", "map_50", "map_75", "mar_1", "mar_10", "mar_100")


def require_pycocotools() -> None:
    """Fail early, with the install command, when the COCO evaluation backend is missing."""
    if importlib.util.find_spec("pycocotools") is None:
        raise ModuleNotFoundError(
            "detection metrics need pycocotools (the COCO evaluation code): "
            "pip install 'convnext-domains[detection]'")


class DetectionMAP(MeanAveragePrecision):
    """torchmetrics' COCO mean average precision, reduced to scalars a logger can take.

    ``compute`` returns ``map`` (AP@[.5:.95]), ``map_50``, ``map_75``, ``mar_1/10/100`` and,
    with ``per_class``, ``ap_<class>`` (AP@[.5:.95] of each class; NaN when the class has no
    true and no predicted box). With ``masks``, the same keys for the instance masks follow
    with a ``segm_`` prefix; box keys have none.

    Args:
        class_names: names of the 0-based labels.
        per_class: also compute per-class AP (one more COCO evaluation per class).
        masks: also evaluate instance masks (``masks`` in predictions and targets).
    """

    def __init__(self, class_names: Sequence[str], per_class: bool = False, masks: bool = False,
                 **kwargs: Any) -> None:
        require_pycocotools()
        iou_type = ("bbox", "segm") if masks else "bbox"
        super().__init__(iou_type=iou_type, class_metrics=per_class, backend="pycocotools", **kwargs)
        self.class_names = list(class_names)
        self.per_class = per_class
        self.masks = masks

    def compute(self) -> dict[str, Tensor]:
        result = super().compute()
        out: dict[str, Tensor] = {}
        for kind in (("bbox", "segm") if self.masks else ("bbox",)):
            source = f"{kind}_" if self.masks else ""
            target = "" if kind == "bbox" else "segm_"
            for key in SUMMARY:
                out[f"{target}{key}"] = result[f"{source}{key}"].float()
            if self.per_class:
                out.update(self._per_class(result[f"{source}map_per_class"], result["classes"], target))
        return out

    def _per_class(self, ap: Tensor, classes: Tensor, prefix: str) -> dict[str, Tensor]:
        by_class = dict(zip(classes.flatten().tolist(), ap.flatten().tolist(), strict=True))
        # torchmetrics writes -1 for a class absent from both predictions and targets.
        return {f"{prefix}ap_{name}": torch.tensor(
                    by_class[i] if by_class.get(i, -1.0) >= 0 else float("nan"))
                for i, name in enumerate(self.class_names)}


# ---- matching detections to true boxes -----------------------------------------------------
def match_image(boxes: Tensor, scores: Tensor, labels: Tensor, true_boxes: Tensor,
                true_labels: Tensor, iou: float = MATCH_IOU) -> tuple[Tensor, Tensor]:
    """Greedy matching of one image's detections to its true boxes, highest score first.

    A detection matches the unmatched true box of its class with the highest IoU, if that IoU
    is ``>= iou`` (COCO's rule). Because matching runs in score order, the matches among the
    detections above any threshold are the same as when matching only those: one pass gives
    recall and precision at every threshold.

    Returns:
        ``true_scores`` ``(M,)``: score of the detection that matched each true box, ``-inf``
        for a missed box; ``is_match`` ``(N,)``: whether each detection matched a true box.
    """
    true_scores = torch.full((len(true_boxes),), float("-inf"))
    is_match = torch.zeros(len(boxes), dtype=torch.bool)
    if len(boxes) == 0 or len(true_boxes) == 0:
        return true_scores, is_match
    overlaps = box_iou(boxes.float().cpu(), true_boxes.float().cpu())
    overlaps[labels.cpu()[:, None] != true_labels.cpu()[None, :]] = -1.0
    taken = torch.zeros(len(true_boxes), dtype=torch.bool)
    for i in torch.argsort(scores.cpu(), descending=True, stable=True).tolist():
        candidates = overlaps[i].masked_fill(taken, -1.0)
        best = int(candidates.argmax())
        if candidates[best] >= iou:
            taken[best] = True
            true_scores[best] = float(scores[i])
            is_match[i] = True
    return true_scores, is_match


def threshold_for_object_recall(true_scores: Tensor, target_recall: float) -> tuple[float, bool]:
    """The highest score threshold whose object recall reaches ``target_recall``.

    ``true_scores`` are :func:`match_image`'s, over all images. This is the project's policy
    for classification (:func:`core.operating_point.threshold_for_recall`) applied to the
    true objects. The detector cannot find a missed box at any threshold, so when the target is
    above the recall it reaches at all, the lowest matched score (the most recall on offer) is
    returned.

    Returns:
        The threshold and whether the target recall is reached.
    """
    if true_scores.numel() == 0:
        raise ValueError("no true boxes: a recall target cannot be placed")
    value = op.threshold_for_recall(true_scores, torch.ones_like(true_scores, dtype=torch.bool),
                                    target_recall)
    if math.isinf(value):
        found = true_scores[torch.isfinite(true_scores)]
        return (float(found.min()) if found.numel() else float("nan")), False
    return value, True


def object_rates(true_scores: Tensor, det_scores: Tensor, det_match: Tensor,
                 threshold: float) -> dict[str, float]:
    """Object recall and precision when detections with ``score >= threshold`` are kept."""
    kept = det_scores >= threshold
    found = int((true_scores >= threshold).sum())
    correct = int((kept & det_match).sum())
    return {
        "threshold": float(threshold),
        "recall": found / len(true_scores) if len(true_scores) else float("nan"),
        "precision": correct / int(kept.sum()) if int(kept.sum()) else float("nan"),
        "true_boxes": len(true_scores), "found": found,
        "detections": int(kept.sum()), "false_detections": int(kept.sum()) - correct,
    }


def image_scores(preds: Sequence[dict[str, Tensor]]) -> Tensor:
    """Highest detection score of each image (``-inf`` when it has no detection)."""
    return torch.tensor([float(p["scores"].max()) if len(p["scores"]) else float("-inf")
                         for p in preds])


def image_level_rates(preds: Sequence[dict[str, Tensor]], targets: Sequence[dict[str, Tensor]],
                      threshold: float) -> dict[str, float]:
    """Image-level decisions from boxes: an image is flagged when any detection has
    ``score >= threshold``, whatever its class and position.

    Returns:
        ``image_recall``: flagged share of the images with at least one true box (in
        manufacturing, the defect recall); ``image_false_positive_rate``: flagged share of the
        images without true boxes (the false-reject rate: good parts rejected);
        ``image_precision`` and the counts ``tp``, ``fp``, ``tn``, ``fn`` of images.
    """
    if len(preds) != len(targets):
        raise ValueError(f"{len(preds)} predictions for {len(targets)} targets")
    has_object = torch.tensor([len(t["boxes"]) > 0 for t in targets], dtype=torch.bool)
    return image_rates(image_scores(preds), has_object, threshold)


def image_rates(scores: Tensor, has_object: Tensor, threshold: float) -> dict[str, float]:
    """:func:`image_level_rates` from each image's highest score and whether it has a true box."""
    rates = op.rates_at_threshold(scores, has_object, threshold)
    return {"image_recall": rates["recall"], "image_false_positive_rate": rates["false_positive_rate"],
            "image_precision": rates["precision"],
            **{k: rates[k] for k in ("tp", "fp", "tn", "fn")}}
