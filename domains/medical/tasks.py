"""Medical tasks: clinical operating points for classification; Dice/IoU/HD95 for segmentation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from torchmetrics import ClasswiseWrapper, MetricCollection
from torchmetrics.classification import MulticlassAveragePrecision

from core.classification import ClassificationTask
from core.segmentation import SegmentationTask
from core.segmentation_metrics import ForegroundDice, HausdorffDistance95


class MedicalClassificationTask(ClassificationTask):
    """Classifier reporting AUROC, average precision, and sensitivity/specificity at an
    operating point chosen on validation (Youden's J by default, or a target sensitivity).

    Args:
        target_recall: ``youden`` or the sensitivity the threshold must reach on validation.
        **kwargs: options of :class:`~core.classification.ClassificationTask`.
    """

    operating_point_names = {
        "threshold": "op_threshold",
        "recall": "op_sensitivity",
        "specificity": "op_specificity",
        "precision": "op_ppv",
        "false_positive_rate": "op_false_positive_rate",
    }

    def __init__(self, target_recall: float | Literal["youden"] | None = "youden", **kwargs: Any) -> None:
        super().__init__(target_recall=target_recall, **kwargs)

    def build_metrics(self) -> MetricCollection:
        metrics = super().build_metrics()
        if not self.multilabel:  # multilabel AP is already in the base collection
            k = self.hparams.num_classes
            metrics.add_metrics({"average_precision": ClasswiseWrapper(
                MulticlassAveragePrecision(k, average=None), labels=self.class_names, prefix="ap_")})
        return metrics


class MedicalSegmentationTask(SegmentationTask):
    """Segmentation with the clinical overlap and boundary metrics: Dice and 95th-percentile
    Hausdorff distance (in pixels times ``pixel_spacing``) of the foreground classes, besides
    IoU and accuracy.

    Args:
        pixel_spacing: pixel size (row, column) in mm used for HD95; ``null`` = pixels.
        **kwargs: options of :class:`~core.segmentation.SegmentationTask`.
    """

    eval_only_metrics = ("hd95",)  # distance transforms per image: too slow for every train step

    def __init__(self, pixel_spacing: Sequence[float] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)

    def build_metrics(self) -> MetricCollection:
        metrics = super().build_metrics()
        k, ignore = self.hparams.num_classes, self.hparams.ignore_index
        metrics.add_metrics({
            "dice": ForegroundDice(k, ignore_index=ignore),
            "hd95": HausdorffDistance95(k, ignore_index=ignore, spacing=self.hparams.pixel_spacing),
        })
        return metrics
