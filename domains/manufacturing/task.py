"""Defect classification: the core classifier with an operating point at a target defect recall."""

from __future__ import annotations

from typing import Any, Literal

from core.classification import ClassificationTask


class DefectClassificationTask(ClassificationTask):
    """Classifier whose decision threshold is set on validation to reach ``target_recall``.

    Reports, at that threshold, the defect recall and the false-reject rate (share of good
    parts flagged as defective): the two numbers a line operator trades off.

    Args:
        target_recall: defect recall the operating point must reach on validation.
        **kwargs: options of :class:`~core.classification.ClassificationTask`.
    """

    operating_point_names = {
        "threshold": "op_threshold",
        "recall": "op_defect_recall",
        "false_positive_rate": "op_false_reject_rate",
        "precision": "op_defect_precision",
        "specificity": "op_good_pass_rate",
    }

    def __init__(self, target_recall: float | Literal["youden"] | None = 0.95, **kwargs: Any) -> None:
        super().__init__(target_recall=target_recall, **kwargs)
