"""Semantic segmentation on the ConvNeXt task: UPerNet/FPN decoder, CE/Dice losses, IoU metrics.

Batches are dicts ``{"image": float (B, C, H, W), "mask": int64 (B, H, W), "id": list[str]}``.
Mask pixels equal to ``ignore_index`` (nodata, unlabelled parts of sparse labels) never
contribute to the loss or to any metric.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchmetrics import ClasswiseWrapper, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassJaccardIndex,
)

from core.distributed import rank_zero_dir
from core.heads import build_head
from core.losses import (
    balanced_class_weights,
    class_weight_buffer,
    masked_cross_entropy,
    soft_dice_loss,
)
from core.reporting import write_segmentation_report
from core.task import ConvNeXtTask

log = logging.getLogger(__name__)

LOSSES = ("ce", "dice", "ce+dice")


class SegmentationTask(ConvNeXtTask):
    """Semantic segmentation: ConvNeXt feature pyramid, UPerNet (or FPN) decoder, pixel losses.

    The timm classifier head is pruned; the decoder trains at the full learning rate (it is
    returned by :meth:`head_modules`) and keeps training while the backbone is frozen.
    ``forward`` returns logits at the input resolution; inputs whose size is not a multiple of
    the coarsest stride (32) are zero-padded internally and the logits cropped back.

    Metrics per split, over labelled pixels only (``ignore_index`` excluded), from the argmax
    class map: ``miou`` (mean IoU over the classes with true or predicted pixels in the split,
    background included; the checkpoint monitor), ``iou_<class>`` (NaN when the split has no
    true and no predicted pixel of the class), ``acc`` (overall pixel accuracy), ``macc`` (mean
    per-class accuracy) and ``f1`` (macro F1). ``test`` writes ``metrics.json`` with per-class IoU,
    precision, recall and the pixel confusion matrix.

    Args:
        head: decoder, ``"upernet"`` (PPM + FPN + fusion, as in the ConvNeXt paper) or the
            lighter ``"fpn"``.
        decoder_channels: width of the decoder (the paper uses 512; 128 suits small data/CPUs).
        decoder_dropout: channel dropout before the decoder's classifier.
        ignore_index: mask value of unlabelled pixels (must not be a class index).
        loss: ``"ce"`` (cross-entropy), ``"dice"`` (soft Dice) or ``"ce+dice"`` (their sum).
        class_weights: ``None``, ``"balanced"`` (inverse pixel frequency from the datamodule's
            ``train_class_counts()``) or one weight per class. They weight the cross-entropy
            term; Dice already gives every class the same say.
        dice_smooth: additive smoothing of the Dice loss.
        input_scale: upsample each input this many times (nearest neighbour) before the
            backbone and average the logits back onto the input pixels. For coarse imagery
            whose objects are a pixel or two (Landsat's 30 m): ConvNeXt's 4x4 stride-4 stem
            otherwise mixes 16 pixels of different classes into one feature. Costs
            ``input_scale**2`` times the compute per input pixel; part of the exported graph.
        **kwargs: backbone and recipe options of :class:`~core.task.ConvNeXtTask`.
    """

    target_key = "mask"
    monitor = "val/miou"
    monitor_mode = "max"

    def __init__(
        self,
        head: Literal["upernet", "fpn"] = "upernet",
        decoder_channels: int = 128,
        decoder_dropout: float = 0.1,
        ignore_index: int = 255,
        loss: Literal["ce", "dice", "ce+dice"] = "ce",
        class_weights: Literal["balanced"] | list[float] | None = None,
        dice_smooth: float = 1.0,
        input_scale: int = 1,
        **kwargs: Any,
    ) -> None:
        if isinstance(input_scale, bool) or not isinstance(input_scale, int) or input_scale < 1:
            raise ValueError(f"input_scale must be a whole number >= 1 (got {input_scale!r}); "
                             "use 1 for no upsampling, 2-4 for coarse imagery")
        super().__init__(**kwargs)
        # Test-only: pixel counts per (true, predicted) class for the report.
        self.test_confusion = MulticlassConfusionMatrix(
            self.hparams.num_classes, ignore_index=self.hparams.ignore_index
        )

    @property
    def ignore_index(self) -> int:
        return int(self.hparams.ignore_index)

    # ---- hooks ---------------------------------------------------------------------------
    def configure_models(self) -> None:
        h = self.hparams
        self.backbone = self.build_backbone(num_classes=0)
        # The decoder reads the stage outputs. timm's pooled head (and its norm) would sit in the
        # optimizer, "trained" through the freeze schedule without a gradient: drop it outright
        # (prune_intermediate_layers keeps head.norm in timm 1.0.12, our floor).
        self.backbone.model.norm_pre = nn.Identity()
        self.backbone.model.head = nn.Identity()
        self.decoder = build_head(
            h.head, self.backbone.channels, self.backbone.strides, h.num_classes,
            decoder_channels=h.decoder_channels, dropout=h.decoder_dropout,
        )

    def head_modules(self) -> list[nn.Module]:
        return [self.decoder]

    def configure_losses(self) -> None:
        h = self.hparams
        if h.loss not in LOSSES:
            raise ValueError(f"unknown loss '{h.loss}'; choose one of {list(LOSSES)}")
        if 0 <= h.ignore_index < h.num_classes:
            raise ValueError(
                f"ignore_index={h.ignore_index} is a class index (num_classes={h.num_classes}); "
                "use a value outside 0..num_classes-1, e.g. 255"
            )
        weights = h.class_weights
        if weights is not None and h.loss == "dice":
            raise ValueError("class_weights weight the cross-entropy term; use loss 'ce' or 'ce+dice'")
        # Not persistent: "balanced" weights are derived from the data, not learned state.
        self.register_buffer("class_weight", class_weight_buffer(weights, h.num_classes),
                             persistent=False)
        self._weights_counted = False

    def setup(self, stage: str) -> None:
        if self.hparams.class_weights != "balanced":
            return
        if self._weights_counted and stage != "fit":
            return  # counting a large training split again for validate/test would only cost time
        datamodule = self.trainer.datamodule if self._trainer else None
        if not hasattr(datamodule, "train_class_counts"):
            log.warning("class_weights='balanced' needs a datamodule with train_class_counts(); "
                        "training without class weights")
            return
        weight = balanced_class_weights(datamodule.train_class_counts())
        if len(weight) != self.hparams.num_classes:
            raise ValueError(f"train_class_counts() has {len(weight)} entries for "
                             f"{self.hparams.num_classes} classes")
        log.info("balanced class weights %s", [round(w, 4) for w in weight.tolist()])
        self.class_weight.copy_(weight)
        self._weights_counted = True

    def compute_loss(self, outputs: Tensor, target: Tensor) -> Tensor:
        target = target.long()
        loss = outputs.new_zeros((), dtype=torch.float32)
        parts = self.hparams.loss.split("+")
        if "ce" in parts:
            loss = loss + masked_cross_entropy(outputs, target, self.ignore_index, self.class_weight)
        if "dice" in parts:
            loss = loss + soft_dice_loss(outputs, target, self.ignore_index, self.hparams.dice_smooth)
        return loss

    def build_metrics(self) -> MetricCollection:
        k, names, ignore = self.hparams.num_classes, self.class_names, self.hparams.ignore_index
        return MetricCollection({
            "miou": MulticlassJaccardIndex(k, average="macro", ignore_index=ignore),
            # A class with no true and no predicted pixel in the split has no IoU: NaN (null
            # in metrics.json), not torchmetrics' default 0.0, which reads as a failed class.
            # The macro mean already leaves such classes out.
            "iou": ClasswiseWrapper(MulticlassJaccardIndex(k, average=None, ignore_index=ignore,
                                                           zero_division=float("nan")),
                                    labels=names, prefix="iou_"),
            "acc": MulticlassAccuracy(k, average="micro", ignore_index=ignore),
            "macc": MulticlassAccuracy(k, average="macro", ignore_index=ignore),
            "f1": MulticlassF1Score(k, average="macro", ignore_index=ignore),
        })

    def update_metrics(self, stage: str, outputs: Tensor, target: Tensor) -> None:
        # One argmax for all metrics; torchmetrics would otherwise repeat it per metric.
        preds = outputs.argmax(dim=1)
        target = target.long()
        self._metrics(stage).update(preds, target)
        if stage == "test":
            self.test_confusion.update(preds, target)

    def on_stage_epoch_end(self, stage: str, values: dict[str, float]) -> None:
        if stage != "test" or self.test_confusion.update_count == 0:
            return
        confusion = self.test_confusion.compute()  # every rank takes part in the sync
        self.test_confusion.reset()
        folder = rank_zero_dir(self.trainer)
        if folder is not None:
            write_segmentation_report(folder, values, confusion, self.class_names,
                                      ignore_index=self.ignore_index,
                                      checkpoint=self.evaluated_checkpoint())

    # ---- forward and prediction ----------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, num_classes, H, W)`` at the input resolution."""
        scale = int(self.hparams.get("input_scale", 1))
        if scale > 1:
            x = F.interpolate(x, scale_factor=scale, mode="nearest")
        height, width = x.shape[-2:]
        multiple = self.backbone.strides[-1]
        pad_h, pad_w = (-height) % multiple, (-width) % multiple
        if pad_h or pad_w:
            # Without padding, odd sizes floor away border pixels at every downsampling and the
            # pyramid levels stop lining up with the input.
            x = F.pad(x, (0, pad_w, 0, pad_h))
        logits = self.decoder(self.backbone.forward_pyramid(x))
        logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        logits = logits[..., :height, :width]
        # Each input pixel is a scale x scale block here: its logits are the block's mean.
        return F.avg_pool2d(logits, scale) if scale > 1 else logits

    def predict_probs(self, x: Tensor) -> Tensor:
        """Softmax class probabilities ``(B, K, H, W)`` in float32, e.g. for sliding windows.

        Call it under ``torch.inference_mode()`` with the task in eval mode.
        """
        return torch.softmax(self(x).float(), dim=1)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        probs = self.predict_probs(batch["image"])
        return {"id": list(batch.get("id", [])), "probs": probs.cpu(),
                "class_names": self.class_names}
