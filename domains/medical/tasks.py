"""Medical tasks: clinical operating points for classification; Dice/IoU/HD95 for segmentation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor
from torch.nn import functional as F
from torchmetrics import ClasswiseWrapper, MetricCollection
from torchmetrics.classification import MulticlassAveragePrecision

from core.classification import ClassificationTask
from core.errors import DataError
from core.segmentation import SegmentationTask
from core.segmentation_metrics import ForegroundDice, HausdorffDistance95
from domains.medical.prediction import SegmentationMaskWriter


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
    Hausdorff distance (HD95) of the foreground classes, besides IoU and accuracy.

    The checkpoint keeps the epoch with the best ``val/dice``, the mean Dice of the foreground
    classes (``val/miou`` would count the background, which dominates medical images).

    HD95 is in mm: each image's own pixel spacing (PixelSpacing/ImagerPixelSpacing, after any
    ``target_spacing``, carried with the sample) is scaled by that image's resize to the
    network grid, per axis (``hd95_resolution: network``), or the prediction is resized to the
    image's own grid and compared with the unresized mask (``native``: slower, no resampling
    error in the reference). Images without spacing use ``pixel_spacing``; with neither, HD95
    is in the image's own pixels (a mix of mm and pixels in one evaluation is an error).

    Args:
        pixel_spacing: (row, column) mm assumed for images whose header has no spacing.
        hd95_resolution: ``network`` (the evaluated input size) or ``native`` (each image's size).
        **kwargs: options of :class:`~core.segmentation.SegmentationTask`.
    """

    monitor = "val/dice"  # logged by ForegroundDice: mean Dice over the foreground classes
    monitor_mode = "max"

    def __init__(self, pixel_spacing: Sequence[float] | None = None,
                 hd95_resolution: Literal["network", "native"] = "network", **kwargs: Any) -> None:
        if hd95_resolution not in ("network", "native"):
            raise ValueError(f"hd95_resolution must be 'network' or 'native', not {hd95_resolution!r}")
        if pixel_spacing is not None and len(pixel_spacing) != 2:
            raise ValueError(f"pixel_spacing must be [row, column] in mm, not {list(pixel_spacing)}")
        super().__init__(**kwargs)
        self._eval_batch: dict[str, Any] | None = None
        self._hd95_units: set[str] = set()

    def build_metrics(self) -> MetricCollection:
        metrics = super().build_metrics()
        k, ignore = self.hparams.num_classes, self.hparams.ignore_index
        metrics.add_metrics({"dice": ForegroundDice(k, ignore_index=ignore)})
        return metrics

    def configure_metrics(self) -> None:
        super().configure_metrics()
        # Outside the collections: HD95 needs each image's spacing and size, not just the masks.
        k, ignore = self.hparams.num_classes, self.hparams.ignore_index
        self.val_hd95 = HausdorffDistance95(k, ignore_index=ignore)
        self.test_hd95 = HausdorffDistance95(k, ignore_index=ignore)

    def prediction_writer(self) -> SegmentationMaskWriter:
        # The format is the datamodule's predict_format: a predict-time choice that a
        # checkpoint's hyperparameters must not override (LightningCLI restores model ones).
        return SegmentationMaskWriter()

    # ---- HD95 ----------------------------------------------------------------------------
    def on_validation_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_batch = batch

    def on_test_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_batch = batch

    def update_metrics(self, stage: str, outputs: Tensor, target: Tensor) -> None:
        super().update_metrics(stage, outputs, target)
        if stage in ("val", "test"):
            self._update_hd95(getattr(self, f"{stage}_hd95"), outputs, target, self._eval_batch or {})

    def _native_spacing(self, batch: dict[str, Any], n: int, device: torch.device) -> Tensor:
        """(B, 2) spacing of each image as read: header, else ``pixel_spacing``, else 1 pixel."""
        spacing = batch.get("spacing")
        spacing = (torch.full((n, 2), float("nan"), dtype=torch.float64, device=device) if spacing is None
                   else spacing.to(device=device, dtype=torch.float64))
        known = ~spacing.isnan().any(dim=1)
        if self.hparams.pixel_spacing is not None:
            fallback = torch.tensor(list(self.hparams.pixel_spacing), dtype=torch.float64, device=device)
            spacing = torch.where(known[:, None], spacing, fallback)
            known = torch.ones_like(known)
        self._hd95_units.update({"mm" if bool(k) else "pixels" for k in known})
        if len(self._hd95_units) > 1:
            raise DataError("HD95 would mix mm and pixels: some images have PixelSpacing in their "
                            "header and others none; set model.init_args.pixel_spacing to the "
                            "[row, column] mm of the images without it")
        return torch.where(known[:, None], spacing, torch.ones_like(spacing))

    def _update_hd95(self, metric: HausdorffDistance95, outputs: Tensor, target: Tensor,
                     batch: dict[str, Any]) -> None:
        natives = batch.get("native_mask")
        if natives is None:  # a datamodule without the image's own grid: network pixels
            metric.update(outputs.argmax(dim=1), target.long())
            return
        spacing = self._native_spacing(batch, len(natives), outputs.device)
        if self.hparams.hd95_resolution == "native":
            for i, native in enumerate(natives):
                logits = F.interpolate(outputs[i : i + 1].float(), size=tuple(native.shape),
                                       mode="bilinear", align_corners=False)
                metric.update(logits.argmax(dim=1), native[None].long(), spacing=spacing[i : i + 1])
            return
        # A pixel of the network grid spans native/network pixels of the image, per axis.
        height, width = target.shape[-2:]
        sizes = torch.tensor([tuple(n.shape) for n in natives], dtype=torch.float64, device=outputs.device)
        scale = sizes / torch.tensor([height, width], dtype=torch.float64, device=outputs.device)
        metric.update(outputs.argmax(dim=1), target.long(), spacing=spacing * scale)

    def on_stage_epoch_end(self, stage: str, values: dict[str, float]) -> None:
        metric = getattr(self, f"{stage}_hd95", None)
        if metric is not None and metric.update_count > 0:
            value = metric.compute()
            metric.reset()
            self.log(f"{stage}/hd95", value)
            values = {**values, f"{stage}/hd95": float(value)}
        self._hd95_units.clear()
        self._eval_batch = None
        super().on_stage_epoch_end(stage, values)
