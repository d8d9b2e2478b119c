"""Object detection (and instance masks) on the ConvNeXt feature pyramid with torchvision's detectors.

Batches are dicts::

    {"image": float (B, C, H, W), normalised, one size per batch,
     "boxes": [float (N_i, 4) xyxy in pixels of the input tensor, ...],
     "labels": [int64 (N_i,) 0-based object class, ...],   # no background class
     "id": [str, ...],
     "masks": [uint8 (N_i, H, W), ...]}                     # instance masks, mask_rcnn only

An image without objects (``N_i = 0``) is a negative sample and trains like any other.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.aggregation import CatMetric
from torchvision.models.detection.anchor_utils import AnchorGenerator

from core import anchors as anchor_rules
from core.backbone import ConvNeXtBackbone
from core.detection_metrics import (
    DetectionMAP,
    image_rates,
    match_image,
    object_rates,
    threshold_for_object_recall,
)
from core.detection_report import SampleImage, write_detection_report
from core.detection_writer import DetectionFileWriter, mask_outputs
from core.detectors import (
    DEFAULT_FOCAL,
    DEFAULT_NMS,
    DETECTORS,
    FOCAL,
    RCNN,
    anchor_generator,
    build_detector,
    pyramid_strides,
)
from core.distributed import gather_objects, rank_zero_dir
from core.task import ConvNeXtTask

log = logging.getLogger(__name__)



# ---- the task --------------------------------------------------------------------------------
class DetectionTask(ConvNeXtTask):
    """Object detection with the ConvNeXt recipe on torchvision's detectors.

    The timm ConvNeXt (any variant, custom depths/dims, any ``in_chans``, local pretrained
    weights) feeds torchvision's ``FeaturePyramidNetwork``; FPN and detector heads train at the
    full learning rate, the ConvNeXt with layer decay (the recipe of
    :class:`~core.task.ConvNeXtTask`: AdamW, warmup-cosine, optional EMA of the weights).

    Training logs each loss term of the detector (``train/loss_<term>``) and their sum
    (``train/loss``). torchvision computes losses only in training mode, so validation has no
    loss: it logs COCO ``val/map`` (AP@[.5:.95]), ``val/map_50``, ``val/map_75`` and ``mar_*``
    (pycocotools through torchmetrics), with ``segm_*`` for mask_rcnn's masks; the checkpoint
    keeps the best ``val/map_50``. Test adds ``ap_<class>`` per class and writes
    ``metrics.json`` and ``detections.png`` (true boxes green, kept detections red) into the
    run's directory.

    Operating point: after each validation the score threshold is chosen at which the
    detections reach ``target_recall`` of the true objects (a detection finds an object of its
    class at IoU >= 0.5, greedily by score), and stored in the checkpoint. Validation and test
    report, at that threshold, object recall and precision and the image-level rates (an image
    is flagged when any detection is kept): recall over images with objects and false-positive
    rate over images without (``op_image_recall``, ``op_image_false_positive_rate``; domains
    rename them in :attr:`operating_point_names`).

    Class weights are not offered: torchvision's detection losses take none, and a weighting
    bolted on outside them would not be the loss that is optimised. For class imbalance use the
    focal-loss settings (fcos, retinanet) or rebalance the data.

    Args:
        detector: ``fcos`` (anchor-free, fewest settings; default), ``retinanet``,
            ``faster_rcnn``, or ``mask_rcnn`` (instance masks: batches must carry ``masks``).
        fpn_channels: channels of every pyramid level and of the heads (torchvision: 256).
        anchor_sizes: anchor sizes (sqrt of the anchor area, pixels of the network input), one
            list per pyramid level (5 levels: P3-P7 for retinanet, P2-P6 for the R-CNNs), the same
            count on each; ``None`` derives them from the training boxes (the datamodule's
            ``train_boxes()``) at ``fit``: each box goes to the level nearest its size
            (``round(log2(sqrt(area) / 32))``), each level's sizes are quantiles of its boxes
            (3 for retinanet, 1 for the R-CNNs), levels without boxes keep torchvision's
            defaults. The result is logged and saved in the hyperparameters. Not used by
            ``fcos`` (anchor-free: giving them is an error).
        aspect_ratios: anchor height/width ratios shared by all levels; ``None`` derives three
            (the 1/6, 1/2 and 5/6 quantiles of the training boxes' ratios), else
            torchvision's ``[0.5, 1.0, 2.0]``.
        score_thresh: detections below this score are dropped inside the model. Low, so mAP and
            the operating point see the whole ranking; the operating threshold is applied on
            top of it.
        nms_thresh: IoU above which a lower-scored detection of the same class is suppressed;
            ``None`` takes torchvision's value for the detector (0.6 fcos, 0.5 others).
        detections_per_img: most detections kept per image.
        min_size: ``None`` keeps the size the datamodule gives (default); else torchvision's
            resize inside the model: shorter side to ``min_size`` (a list: a random choice per
            training image, the last one for evaluation), longer side at most ``max_size``.
            Boxes are reported in the input's pixels either way.
        max_size: upper bound of the longer side when ``min_size`` is given.
        focal_alpha: focal-loss alpha of fcos/retinanet (``None``: torchvision's 0.25).
        focal_gamma: focal-loss gamma of fcos/retinanet (``None``: torchvision's 2.0).
        target_recall: object recall the operating threshold is chosen for on validation;
            ``None`` chooses none (reports and predictions then keep scores >= 0.5, said once
            as a warning).
        report_images: test images drawn in ``detections.png``.
        **kwargs: backbone and recipe options of :class:`~core.task.ConvNeXtTask`
            (``num_classes`` counts object classes, without background).
    """

    target_key = "boxes"
    monitor = "val/map_50"
    monitor_mode = "max"
    # Names of the operating-point values in logs and reports; domains rename them.
    operating_point_names: dict[str, str] = {
        "threshold": "op_threshold",
        "recall": "op_recall",
        "precision": "op_precision",
        "image_recall": "op_image_recall",
        "image_false_positive_rate": "op_image_false_positive_rate",
    }
    _collected_keys = ("true_scores", "det_scores", "det_match", "image_scores", "image_positive")

    def __init__(
        self,
        detector: Literal["fcos", "retinanet", "faster_rcnn", "mask_rcnn"] = "fcos",
        fpn_channels: int = 256,
        anchor_sizes: list[list[float]] | None = None,
        aspect_ratios: list[float] | None = None,
        score_thresh: float = 0.05,
        nms_thresh: float | None = None,
        detections_per_img: int = 100,
        min_size: int | list[int] | None = None,
        max_size: int | None = None,
        focal_alpha: float | None = None,
        focal_gamma: float | None = None,
        target_recall: float | None = 0.9,
        report_images: int = 8,
        **kwargs: Any,
    ) -> None:
        # Given anchors are kept; missing ones are derived from the training boxes at fit.
        self._anchors_given = (anchor_sizes is not None, aspect_ratios is not None)
        super().__init__(**kwargs)
        self.register_buffer("threshold", torch.tensor(float("nan")))
        stages = ("val", "test")
        self.collected = nn.ModuleDict({f"{s}_{k}": CatMetric(nan_strategy="disable")
                                        for s in stages for k in self._collected_keys})
        self._samples: list[SampleImage] = []

    # ---- model -------------------------------------------------------------------------
    @property
    def backbone(self) -> ConvNeXtBackbone:
        """The ConvNeXt inside the detector (one module, so the recipe's layer decay, the
        freeze schedule and the checkpoint all see the same weights)."""
        return self.detector.backbone.body

    @property
    def kind(self) -> str:
        return str(self.hparams.detector)

    @property
    def label_offset(self) -> int:
        """The R-CNNs reserve class 0 for background; our labels are object classes from 0."""
        return 1 if self.kind in RCNN else 0

    @property
    def uses_anchors(self) -> bool:
        return self.kind != "fcos"

    def configure_models(self) -> None:
        h = self._checked_options()
        body = self.build_backbone(num_classes=0)
        # The detector reads the stage outputs: timm's pooled head (and its norm) would sit in
        # the optimizer without a gradient, so it goes (as in segmentation).
        body.model.norm_pre = nn.Identity()
        body.model.head = nn.Identity()
        sizes, ratios = self._initial_anchors(len(pyramid_strides(self.kind, body.strides)))
        focal = None
        if h.focal_alpha is not None or h.focal_gamma is not None:
            focal = (DEFAULT_FOCAL[0] if h.focal_alpha is None else float(h.focal_alpha),
                     DEFAULT_FOCAL[1] if h.focal_gamma is None else float(h.focal_gamma))
        nms = DEFAULT_NMS[self.kind] if h.nms_thresh is None else float(h.nms_thresh)
        self.detector = build_detector(
            self.kind, body, h.num_classes, h.in_chans, h.fpn_channels, sizes, ratios,
            float(h.score_thresh), nms, int(h.detections_per_img), h.min_size, h.max_size, focal)

    def _checked_options(self) -> Any:
        h = self.hparams
        if h.detector not in DETECTORS:
            raise ValueError(f"unknown detector '{h.detector}'; choose one of {list(DETECTORS)}")
        if h.detector == "fcos" and (h.anchor_sizes is not None or h.aspect_ratios is not None):
            raise ValueError("detector 'fcos' is anchor-free: remove anchor_sizes/aspect_ratios, or "
                             "choose detector retinanet, faster_rcnn or mask_rcnn to use them")
        if h.detector not in FOCAL and (h.focal_alpha is not None or h.focal_gamma is not None):
            raise ValueError(f"detector '{h.detector}' has no focal loss (cross-entropy in RPN and "
                             "box head): remove focal_alpha/focal_gamma, or use fcos or retinanet")
        if h.focal_alpha is not None and not 0.0 <= h.focal_alpha <= 1.0:
            raise ValueError(f"focal_alpha={h.focal_alpha}: the weight of positives, in [0, 1]")
        if h.focal_gamma is not None and h.focal_gamma < 0:
            raise ValueError(f"focal_gamma={h.focal_gamma}: must be >= 0 (0 is cross-entropy)")
        if not 0.0 <= h.score_thresh < 1.0:
            raise ValueError(f"score_thresh={h.score_thresh}: must be in [0, 1), e.g. 0.05")
        if h.nms_thresh is not None and not 0.0 < h.nms_thresh <= 1.0:
            raise ValueError(f"nms_thresh={h.nms_thresh}: an IoU in (0, 1], e.g. 0.5")
        if h.detections_per_img < 1:
            raise ValueError(f"detections_per_img={h.detections_per_img}: must be >= 1")
        if h.fpn_channels < 1:
            raise ValueError(f"fpn_channels={h.fpn_channels}: must be >= 1, e.g. 256")
        if h.detector == "fcos" and h.fpn_channels % 32:
            # FCOS's head normalises with GroupNorm(32 groups).
            raise ValueError(f"fpn_channels={h.fpn_channels}: detector 'fcos' needs a multiple of "
                             "32 (its head uses 32-group GroupNorm), e.g. 32, 64 or 256")
        sizes = [h.min_size] if isinstance(h.min_size, int) else (h.min_size or [])
        if any(s < 1 for s in sizes) or (h.min_size is not None and not sizes):
            raise ValueError(f"min_size={h.min_size}: a positive size or a list of them; "
                             "null keeps the datamodule's size")
        if h.max_size is not None and (h.min_size is None or h.max_size < max(sizes)):
            raise ValueError(f"max_size={h.max_size} caps the longer side after resizing to "
                             f"min_size={h.min_size}: give min_size too, with max_size >= min_size")
        if h.target_recall is not None and not 0.0 < h.target_recall <= 1.0:
            raise ValueError(f"target_recall={h.target_recall}: a recall in (0, 1], e.g. 0.9, "
                             "or null for no operating point")
        return h

    @property
    def num_levels(self) -> int:
        """Pyramid levels (5 for the usual 4 ConvNeXt stages: P3-P7 or P2-P6)."""
        return len(self.detector.backbone.strides)

    def _initial_anchors(self, levels: int) -> tuple[list[list[float]] | None, list[float]]:
        if not self.uses_anchors:
            return None, [1.0]
        h = self.hparams
        per_level = anchor_rules.SIZES_PER_LEVEL[self.kind]
        sizes = (anchor_rules.check_anchor_sizes(h.anchor_sizes, levels)
                 if h.anchor_sizes is not None
                 else anchor_rules.default_anchor_sizes(levels, per_level))
        ratios = (anchor_rules.check_aspect_ratios(h.aspect_ratios) if h.aspect_ratios is not None
                  else list(anchor_rules.DEFAULT_RATIOS))
        return sizes, ratios

    @property
    def anchors(self) -> AnchorGenerator | None:
        """The detector's anchor generator (None for the anchor-free fcos)."""
        if not self.uses_anchors:
            return None
        return self.detector.rpn.anchor_generator if self.kind in RCNN else self.detector.anchor_generator

    def set_anchors(self, sizes: list[list[float]], ratios: list[float]) -> None:
        """Replace the anchors (no weights change: the count per location must stay the same)."""
        sizes = anchor_rules.check_anchor_sizes(sizes, self.num_levels)
        ratios = anchor_rules.check_aspect_ratios(ratios)
        generator = anchor_generator(sizes, ratios)
        now, new = self.anchors.num_anchors_per_location()[0], generator.num_anchors_per_location()[0]
        if now != new:
            raise ValueError(
                f"anchors {sizes} x ratios {ratios} give {new} anchors per location but the model's "
                f"head predicts {now}: set model.init_args.anchor_sizes and aspect_ratios to the "
                "checkpoint's (its hyper_parameters) when evaluating it")
        if self.kind in RCNN:
            self.detector.rpn.anchor_generator = generator
        else:
            self.detector.anchor_generator = generator
        self.hparams.anchor_sizes, self.hparams.aspect_ratios = sizes, ratios

    def head_modules(self) -> list[nn.Module]:
        """FPN and every detector part outside the ConvNeXt (full learning rate)."""
        parts = [self.detector.backbone.fpn]
        return parts + [m for name, m in self.detector.named_children()
                        if name not in ("backbone", "transform")]

    def configure_losses(self) -> None:
        """Nothing to build: torchvision's detectors compute their own losses."""

    def build_metrics(self, per_class: bool = False) -> MetricCollection:
        return MetricCollection({"map": DetectionMAP(self.class_names, per_class=per_class,
                                                     masks=self.kind == "mask_rcnn")},
                                compute_groups=False)

    def configure_metrics(self) -> None:
        # mAP in training mode is not defined (the model returns losses); per-class AP costs a
        # COCO evaluation per class, so only the test report has it.
        self.val_metrics = self.build_metrics().clone(prefix="val/")
        self.test_metrics = self.build_metrics(per_class=True).clone(prefix="test/")

    # ---- anchors from the data -------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if stage != "fit" or not self.uses_anchors or all(self._anchors_given):
            return
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        train_boxes = getattr(datamodule, "train_boxes", None)
        if train_boxes is None:
            log.info("the datamodule has no train_boxes(): anchors stay torchvision's defaults, "
                     "sizes %s, aspect ratios %s", *self._current_anchors())
            return
        boxes = np.asarray(train_boxes(), dtype=np.float64).reshape(-1, 4)
        valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        if not valid.any():
            log.info("no training boxes to derive anchors from: anchors stay sizes %s, aspect "
                     "ratios %s", *self._current_anchors())
            return
        sizes, ratios = self._current_anchors()
        per_level = len(sizes[0])
        if not self._anchors_given[0]:
            sizes = anchor_rules.derive_anchor_sizes(boxes, self.num_levels, per_level)
        if not self._anchors_given[1]:
            ratios = anchor_rules.derive_aspect_ratios(boxes, len(ratios))
        self.set_anchors(sizes, ratios)
        log.info("anchors derived from %d training boxes: sizes per pyramid level %s (sqrt of "
                 "area, px), aspect ratios (h/w) %s", int(valid.sum()), sizes, ratios)

    def _current_anchors(self) -> tuple[list[list[float]], list[float]]:
        generator = self.anchors
        sizes = [list(level) for level in generator.sizes]
        return sizes, list(generator.aspect_ratios[0])

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Anchors are not weights: a checkpoint whose anchors were derived from its training data
        # must get them back even when this model was configured without them (e.g. `test`
        # from a config with anchor_sizes: null).
        saved = checkpoint.get("hyper_parameters", {})
        if self.uses_anchors and saved.get("anchor_sizes") is not None:
            sizes, ratios = saved["anchor_sizes"], saved.get("aspect_ratios")
            if ratios is None:
                ratios = self._current_anchors()[1]
            if (sizes, ratios) != tuple(self._current_anchors()):
                self.set_anchors(sizes, ratios)

    # ---- steps -------------------------------------------------------------------------
    def forward(self, x: Tensor, targets: list[dict[str, Tensor]] | None = None
                ) -> list[dict[str, Tensor]] | dict[str, Tensor]:
        """Detections per image in eval mode: ``boxes`` (xyxy, input pixels), ``scores``,
        ``labels`` (0-based), and ``masks`` (probabilities ``(N, 1, H, W)``) for mask_rcnn.

        In training mode, with ``targets`` (0-based labels), the dict of loss terms. NMS, the
        score filter and the box decoding stay inside the torchvision model, so they are part
        of a traced or exported graph.
        """
        images = list(x)
        if targets is not None:
            targets = [{**t, "labels": t["labels"] + self.label_offset} for t in targets]
        out = self.detector(images, targets)
        if isinstance(out, dict) or not self.label_offset:
            return out
        return [{**d, "labels": d["labels"] - self.label_offset} for d in out]

    def _targets(self, batch: dict[str, Any]) -> list[dict[str, Tensor]]:
        boxes, labels = batch["boxes"], batch["labels"]
        masks = batch.get("masks")
        if self.kind == "mask_rcnn" and masks is None:
            raise ValueError("detector 'mask_rcnn' needs instance masks: the batch has no 'masks' "
                             "(use a datamodule that reads masks, or detector faster_rcnn)")
        targets = []
        for i, (b, lab) in enumerate(zip(boxes, labels, strict=True)):
            target = {"boxes": b.float().reshape(-1, 4), "labels": lab.long().reshape(-1)}
            if self.kind == "mask_rcnn":
                target["masks"] = masks[i].to(torch.uint8)
            targets.append(target)
        return targets

    def _shared_step(self, batch: dict[str, Any], stage: str) -> Tensor | None:
        x = batch["image"]
        targets = self._targets(batch)
        if stage == "train":
            losses = self(x, targets)
            loss = torch.stack(list(losses.values())).sum()
            if not torch.isfinite(loss):
                raise FloatingPointError(self._non_finite_message(stage, loss))
            self.log_dict({f"train/loss_{k.removeprefix('loss_')}": v.detach() for k, v in losses.items()},
                          on_step=False, on_epoch=True, batch_size=x.shape[0])
            self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True,
                     batch_size=x.shape[0])
            return loss
        preds = self(x)
        self.update_metrics(stage, preds, targets)
        if stage == "test":
            self._keep_samples(batch, preds, targets)
        return None

    def on_test_epoch_start(self) -> None:
        self._samples = []  # a test run that stopped early must not leave its images here

    def on_train_epoch_end(self) -> None:
        """Losses are logged per step; there are no training metrics to compute."""

    def update_metrics(self, stage: str, outputs: list[dict[str, Tensor]],
                       target: list[dict[str, Tensor]]) -> None:
        preds = [{k: d[k] for k in ("boxes", "scores", "labels")} for d in outputs]
        truth = [{"boxes": t["boxes"], "labels": t["labels"]} for t in target]
        if self.kind == "mask_rcnn":
            for p, d in zip(preds, outputs, strict=True):
                p["masks"] = d["masks"][:, 0] > 0.5
            for t, src in zip(truth, target, strict=True):
                t["masks"] = src["masks"].bool()
        self._metrics(stage).update(preds, truth)
        matched = [match_image(p["boxes"], p["scores"], p["labels"], t["boxes"], t["labels"])
                   for p, t in zip(preds, truth, strict=True)]
        values = {
            "true_scores": torch.cat([m[0] for m in matched]),
            "det_scores": torch.cat([p["scores"].detach().float().cpu() for p in preds]),
            "det_match": torch.cat([m[1] for m in matched]).float(),
            "image_scores": torch.tensor([float(p["scores"].max()) if len(p["scores"]) else -math.inf
                                          for p in preds]),
            "image_positive": torch.tensor([float(len(t["boxes"]) > 0) for t in truth]),
        }
        for key, value in values.items():
            if value.numel():
                self.collected[f"{stage}_{key}"].update(value.to(self.device))

    def _keep_samples(self, batch: dict[str, Any], preds: list[dict[str, Tensor]],
                      targets: list[dict[str, Tensor]]) -> None:
        ids = list(batch.get("id", []))
        for i, (p, t) in enumerate(zip(preds, targets, strict=True)):
            if len(self._samples) >= self.hparams.report_images:
                return
            self._samples.append(SampleImage(
                id=ids[i] if i < len(ids) else f"image_{len(self._samples)}",
                image=batch["image"][i].detach().cpu(), true_boxes=t["boxes"].cpu(),
                true_labels=t["labels"].cpu(), boxes=p["boxes"].detach().cpu(),
                scores=p["scores"].detach().cpu(), labels=p["labels"].cpu()))

    # ---- operating point -------------------------------------------------------------------
    def _take(self, stage: str) -> dict[str, Tensor]:
        out = {}
        for key in self._collected_keys:
            metric = self.collected[f"{stage}_{key}"]
            value = metric.compute() if metric.update_count else None
            out[key] = value.cpu() if isinstance(value, Tensor) else torch.empty(0)
            metric.reset()
        out["det_match"] = out["det_match"] > 0.5
        out["image_positive"] = out["image_positive"] > 0.5
        return out

    def operating_threshold(self) -> float:
        """The score threshold chosen on validation; 0.5, said once as a warning, when none was."""
        if not torch.isnan(self.threshold):
            return float(self.threshold)
        if not getattr(self, "_default_threshold_said", False):
            log.warning("no operating point was chosen on validation (target_recall is null, no "
                        "validation run, or no object detected in it): keeping detections with "
                        "score >= 0.5")
            self._default_threshold_said = True
        return 0.5

    def _choose_threshold(self, true_scores: Tensor) -> None:
        goal = self.hparams.target_recall
        if goal is None:
            return
        if true_scores.numel() == 0:
            log.warning("validation split has no true boxes: operating point left unchanged")
            return
        value, reached = threshold_for_object_recall(true_scores, float(goal))
        if math.isnan(value):
            log.warning("no validation object was detected at all: operating point left unchanged")
            return
        if not reached:
            found = float(torch.isfinite(true_scores).float().mean())
            log.warning("target_recall %.3f is out of reach on validation: the detections find "
                        "%.3f of the objects at most (score_thresh=%s, detections_per_img=%s); "
                        "threshold set to keep all of them", goal, found,
                        self.hparams.score_thresh, self.hparams.detections_per_img)
        self.threshold.fill_(value)

    def on_stage_epoch_end(self, stage: str, values: dict[str, float]) -> None:
        data = self._take(stage)
        # Lightning's sanity check (two batches of an untrained model) must neither choose the
        # operating point nor warn that it found no objects.
        if not data["image_scores"].numel() or self.sanity_checking:
            return
        if stage == "val":
            self._choose_threshold(data["true_scores"])
        threshold = self.operating_threshold()
        rates = {**object_rates(data["true_scores"], data["det_scores"], data["det_match"], threshold),
                 **image_rates(data["image_scores"], data["image_positive"], threshold)}
        named = {self.operating_point_names[k]: v for k, v in rates.items()
                 if k in self.operating_point_names}
        logged = {f"{stage}/{k}": v for k, v in named.items() if not math.isnan(v)}
        self.log_dict(logged)
        if stage != "test":
            return
        # Under DDP every rank kept its own sample images: rank 0 draws up to report_images of them.
        samples = [s for share in gather_objects(self._samples) for s in share][:self.hparams.report_images]
        self._samples = []
        folder = rank_zero_dir(self.trainer)
        if folder is None:
            return
        kept = [_filtered(s, threshold) for s in samples]
        details = {
            "detector": self.kind,
            "num_images": int(data["image_scores"].numel()),
            "num_true_boxes": int(data["true_scores"].numel()),
            "anchors": ({"sizes": self._current_anchors()[0], "aspect_ratios": self._current_anchors()[1]}
                        if self.uses_anchors else "anchor-free"),
            "operating_point": {
                "rule": "a detection is kept when its score >= threshold; an image is flagged "
                        "when it has a kept detection",
                "target_recall": self.hparams.target_recall,
                "match_iou": 0.5,
                **{k: (None if math.isnan(v) else v) for k, v in named.items()},
                "object_counts": {k: rates[k] for k in ("true_boxes", "found", "detections",
                                                        "false_detections")},
                "image_counts": {k: rates[k] for k in ("tp", "fp", "tn", "fn")},
            },
        }
        write_detection_report(folder, {**values, **logged}, self.class_names, kept,
                               details, checkpoint=self.evaluated_checkpoint(), threshold=threshold)

    # ---- prediction --------------------------------------------------------------------
    def prediction_writer(self) -> DetectionFileWriter:
        """``detections.csv`` / ``detections.json`` of ``predict`` in the run's folder."""
        return DetectionFileWriter()

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """Per image (in the order of ``id``): all detections above ``score_thresh``,
        ``kept``, whether each reaches the operating threshold, and for mask_rcnn the instance
        ``masks`` (probabilities at the network-input size) the writer encodes as COCO RLE."""
        preds = self(batch["image"])
        threshold = self.operating_threshold()
        return {
            "id": list(batch.get("id", [])),
            "boxes": [p["boxes"].detach().float().cpu() for p in preds],
            "scores": [p["scores"].detach().float().cpu() for p in preds],
            "labels": [p["labels"].cpu() for p in preds],
            "kept": [(p["scores"] >= threshold).cpu() for p in preds],
            "threshold": threshold,
            "class_names": self.class_names,
            **mask_outputs(preds),
        }


def _filtered(sample: SampleImage, threshold: float) -> SampleImage:
    keep = sample.scores >= threshold
    return SampleImage(sample.id, sample.image, sample.true_boxes, sample.true_labels,
                       sample.boxes[keep], sample.scores[keep], sample.labels[keep])
