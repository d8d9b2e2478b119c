"""Medical detection: the core detector, reported per patient, predictions keyed by image.

The operating point (a score threshold chosen on validation for ``target_recall`` of the true
objects) is core's; this adds the patient-level sensitivity at it and writes predictions as
``detections.csv`` / ``detections.json`` keyed by path, SOP Instance UID and frame, with boxes
in pixels of the stored image (the manifest's coordinates). Nothing identifying a patient is
written: the patients are integer positions in the data, used only to count.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import Tensor
from torchmetrics.aggregation import CatMetric

from core.detection import DetectionTask
from core.detection_metrics import match_image
from core.detection_writer import DetectionFileWriter

log = logging.getLogger(__name__)

def patient_sensitivity(patients: Tensor, best_true_scores: Tensor, has_objects: Tensor,
                        threshold: float) -> tuple[float, int, int]:
    """Share of patients with at least one true object who get at least one true positive
    (a detection matching a true box, score >= ``threshold``) on any of their images.

    Args:
        patients: ``(N,)`` patient index of each image (-1: unknown, left out).
        best_true_scores: ``(N,)`` highest score of a detection matching a true box of the
            image (``-inf`` when none matched or the image has no object).
        has_objects: ``(N,)`` whether the image has a true object.
        threshold: the operating score threshold.

    Returns:
        (sensitivity, patients found, patients with objects); NaN when no patient has an object.
    """
    known = patients >= 0
    positive = set(patients[known & has_objects.bool()].tolist())
    found = set(patients[known & has_objects.bool() & (best_true_scores >= threshold)].tolist())
    if not positive:
        return float("nan"), 0, 0
    return len(found) / len(positive), len(found), len(positive)


class MedicalDetectionTask(DetectionTask):
    """Lesion detector whose score threshold is set on validation to find ``target_recall`` of
    the true objects (boxes, IoU >= 0.5).

    At that threshold it reports, besides object sensitivity and PPV and the image-level rates,
    the patient-level sensitivity ``op_patient_sensitivity``: the share of patients with at
    least one true object who get at least one true positive on any of their images (batches
    need ``patient_index``, as :class:`~domains.medical.detection.DicomDetectionDataModule`
    gives; otherwise it is left out). ``predict`` writes ``detections.csv`` and
    ``detections.json`` (see :class:`DicomDetectionFileWriter`).

    Args:
        target_recall: share of the true boxes the threshold must find on validation.
        **kwargs: options of :class:`~core.detection.DetectionTask`.
    """

    operating_point_names = {
        "threshold": "op_threshold",
        "recall": "op_object_sensitivity",
        "precision": "op_object_ppv",
        "image_recall": "op_image_sensitivity",
        "image_false_positive_rate": "op_image_false_positive_rate",
    }
    _patient_keys = ("patient", "best_true_score", "has_objects")

    def __init__(self, target_recall: float | None = 0.9, **kwargs: Any) -> None:
        super().__init__(target_recall=target_recall, **kwargs)
        self.patient_collected = torch.nn.ModuleDict({f"{s}_{k}": CatMetric(nan_strategy="disable")
                                                      for s in ("val", "test") for k in self._patient_keys})
        self._eval_batch: dict[str, Any] | None = None

    def prediction_writer(self) -> DicomDetectionFileWriter:
        return DicomDetectionFileWriter()

    # ---- per-patient sensitivity ----------------------------------------------------------
    def on_validation_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_batch = batch

    def on_test_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_batch = batch

    def update_metrics(self, stage: str, outputs: list[dict[str, Tensor]],
                       target: list[dict[str, Tensor]]) -> None:
        super().update_metrics(stage, outputs, target)
        patients = (self._eval_batch or {}).get("patient_index")
        if patients is None or stage not in ("val", "test"):
            return
        best = []
        for p, t in zip(outputs, target, strict=True):
            true_scores, _ = match_image(p["boxes"], p["scores"], p["labels"], t["boxes"], t["labels"])
            best.append(float(true_scores.max()) if len(true_scores) else -math.inf)
        values = {"patient": torch.as_tensor(patients).float().reshape(-1),
                  "best_true_score": torch.tensor(best),
                  "has_objects": torch.tensor([float(len(t["boxes"]) > 0) for t in target])}
        for key, value in values.items():
            self.patient_collected[f"{stage}_{key}"].update(value.to(self.device))

    def _patient_rates(self, stage: str) -> dict[str, float]:
        metrics = {k: self.patient_collected[f"{stage}_{k}"] for k in self._patient_keys}
        if not all(m.update_count for m in metrics.values()):
            return {}
        data = {k: m.compute().cpu() for k, m in metrics.items()}
        for m in metrics.values():
            m.reset()
        value, found, positive = patient_sensitivity(data["patient"].long(), data["best_true_score"],
                                                     data["has_objects"] > 0.5, self.operating_threshold())
        if not positive:
            return {}
        log.info("%s: %d of %d patients with objects have a true positive at the operating threshold",
                 stage, found, positive)
        return {f"{stage}/op_patient_sensitivity": value}

    def on_stage_epoch_end(self, stage: str, values: dict[str, float]) -> None:
        # Validation chooses the threshold inside the base hook, so its patient rate comes after;
        # test's threshold is fixed, and its rate must reach the report the base hook writes.
        if stage == "val":
            super().on_stage_epoch_end(stage, values)
            self.log_dict(self._patient_rates(stage))
            return
        rates = self._patient_rates(stage)
        self.log_dict(rates)
        super().on_stage_epoch_end(stage, {**values, **rates})
        self._eval_batch = None


class DicomDetectionFileWriter(DetectionFileWriter):
    """Core's ``detections.csv`` / ``detections.json`` with each image keyed by ``path``,
    ``sop_instance_uid`` and ``frame`` (batches without them use ``id`` as the path, UID empty,
    frame 0); never a patient identifier.

    Args:
        stem: file name stem of the two files.
    """

    key_columns = ("path", "sop_instance_uid", "frame")

    def image_keys(self, batch: dict[str, Any], prediction: dict[str, Any], i: int) -> dict[str, Any]:
        return {"path": str(batch["path"][i]) if "path" in batch else str(prediction["id"][i]),
                "sop_instance_uid": str(batch["sop_instance_uid"][i]) if "sop_instance_uid" in batch else "",
                "frame": int(batch["frame"][i]) if "frame" in batch else 0}
