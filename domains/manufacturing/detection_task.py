"""Defect detection: the core detector, reported as a line operator reads it."""

from __future__ import annotations

from typing import Any

from core.detection import DetectionTask


class DefectDetectionTask(DetectionTask):
    """Detector of defects whose score threshold is set on validation to find ``target_recall``
    of the true defects (boxes, IoU >= 0.5).

    At that threshold a part is rejected when any defect box is kept, so besides object recall
    and precision it reports the image-level defect recall (rejected share of defective parts)
    and the false-reject rate (rejected share of good parts): ``op_defect_recall`` and
    ``op_false_reject_rate``, the same names as :class:`DefectClassificationTask`.

    Args:
        target_recall: share of the true defect boxes the threshold must find on validation.
        **kwargs: options of :class:`~core.detection.DetectionTask`.
    """

    operating_point_names = {
        "threshold": "op_threshold",
        "recall": "op_object_recall",
        "precision": "op_object_precision",
        "image_recall": "op_defect_recall",
        "image_false_positive_rate": "op_false_reject_rate",
    }

    def __init__(self, target_recall: float | None = 0.9, **kwargs: Any) -> None:
        super().__init__(target_recall=target_recall, **kwargs)
