"""Image classification on the ConvNeXt task: binary, multiclass and multilabel, with operating points."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchmetrics import ClasswiseWrapper, MetricCollection
from torchmetrics.aggregation import CatMetric
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
    MultilabelAccuracy,
    MultilabelAUROC,
    MultilabelAveragePrecision,
    MultilabelF1Score,
)

from core import operating_point as op
from core.distributed import rank_zero_dir
from core.losses import balanced_class_weights, class_weight_buffer
from core.prediction_writer import ClassificationCSVWriter
from core.reporting import write_classification_report
from core.task import ConvNeXtTask

log = logging.getLogger(__name__)


class ClassificationTask(ConvNeXtTask):
    """Classification with the ConvNeXt recipe.

    Binary problems are two-class softmax problems (``num_classes: 2``); the positive class is
    ``positive_classes`` (default: the second class). Multilabel problems use one sigmoid per
    label.

    Args:
        multilabel: one independent sigmoid output per class instead of a softmax.
        label_smoothing: label smoothing of the loss (0 disables).
        class_weights: ``None``, ``"balanced"`` or one weight per class, against class
            imbalance. ``balanced``: inverse class frequency of the training split (softmax), or
            for ``multilabel`` the BCE ``pos_weight`` of each label (negatives per positive).
        positive_classes: classes whose summed probability is the score of the binary decision
            (e.g. ``[defective]``); default the second class of a two-class problem.
        target_recall: when set, the operating point is the highest threshold that reaches this
            recall of the positive classes on validation; stored in the checkpoint and applied
            on test and predict. ``"youden"`` maximises sensitivity + specificity instead.
        tta: test-time augmentation outside training: ``none``, ``hflip`` (image and its mirror)
            or ``flips`` (also the vertical and the double flip); the logits of the views are
            averaged. Validation uses it too, so the operating point is chosen on the same
            function that is tested and exported (the ONNX graph contains the flips). Costs 2x
            or 4x inference; use it only where flipped inputs are valid samples.
        **kwargs: backbone and recipe options of :class:`~core.task.ConvNeXtTask`.
    """

    monitor = "val/auroc"
    monitor_mode = "max"
    # Names of the operating-point rates in logs and reports; domains rename them.
    operating_point_names: dict[str, str] = {
        "threshold": "op_threshold",
        "recall": "op_recall",
        "specificity": "op_specificity",
        "precision": "op_precision",
        "false_positive_rate": "op_false_positive_rate",
    }

    def __init__(
        self,
        multilabel: bool = False,
        label_smoothing: float = 0.0,
        class_weights: Literal["balanced"] | list[float] | None = None,
        positive_classes: Sequence[str] | None = None,
        target_recall: float | Literal["youden"] | None = None,
        tta: Literal["none", "hflip", "flips"] = "none",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.register_buffer("threshold", torch.tensor(float("nan")))
        self.positive_index = self._resolve_positive(positive_classes)
        stages = ("val", "test", "predict")
        self.collected = nn.ModuleDict(
            {f"{s}_{k}": CatMetric(nan_strategy="disable") for s in stages for k in ("probs", "target")}
        )

    @property
    def multilabel(self) -> bool:
        return bool(self.hparams.get("multilabel", False))

    def _resolve_positive(self, names: Sequence[str] | None) -> list[int]:
        if names is None:
            return [1] if self.hparams.num_classes == 2 and not self.multilabel else []
        unknown = [n for n in names if n not in self.class_names]
        if unknown:
            raise ValueError(f"positive_classes {unknown} not among class_names {self.class_names}")
        return [self.class_names.index(n) for n in names]

    def forward(self, x: Tensor) -> Tensor:
        logits = self.backbone(x)
        tta = self.hparams.get("tta", "none")
        if self.training or tta == "none":
            return logits
        views = [x.flip(-1)] + ([x.flip(-2), x.flip(-2, -1)] if tta == "flips" else [])
        for view in views:
            logits = logits + self.backbone(view)
        return logits / (1 + len(views))

    # ---- hooks ---------------------------------------------------------------------------
    def configure_losses(self) -> None:
        # Not persistent: "balanced" weights are derived from the data, not learned state.
        self.register_buffer("class_weight", class_weight_buffer(
            self.hparams.class_weights, self.hparams.num_classes), persistent=False)

    def setup(self, stage: str) -> None:
        datamodule = self.trainer.datamodule if self._trainer else None
        given = getattr(datamodule, "positive_classes", None)
        if self.hparams.positive_classes is None and given is not None:
            # Saved in the hyperparameters so a reloaded checkpoint decides the same way.
            self.hparams.positive_classes = list(given)
            self.positive_index = self._resolve_positive(given)
        if self.hparams.class_weights == "balanced" and hasattr(datamodule, "train_class_counts"):
            counts = torch.as_tensor(datamodule.train_class_counts(), dtype=torch.float32)
            if self.multilabel:  # BCE pos_weight: negatives per positive
                weight = (len(datamodule.train_indices) - counts) / counts.clamp(min=1)
            else:
                weight = balanced_class_weights(counts)
            log.info("balanced class weights %s", [round(w, 4) for w in weight.tolist()])
            self.class_weight.copy_(weight)

    def compute_loss(self, outputs: Tensor, target: Tensor) -> Tensor:
        if self.multilabel:
            target = target.float()
            eps = self.hparams.label_smoothing
            if eps:
                target = target * (1 - eps) + 0.5 * eps
            return F.binary_cross_entropy_with_logits(outputs, target, pos_weight=self.class_weight)
        return F.cross_entropy(outputs, target, weight=self.class_weight,
                               label_smoothing=self.hparams.label_smoothing)

    def probabilities(self, logits: Tensor) -> Tensor:
        return torch.sigmoid(logits) if self.multilabel else torch.softmax(logits, dim=1)

    def build_metrics(self) -> MetricCollection:
        k, names = self.hparams.num_classes, self.class_names
        if self.multilabel:
            return MetricCollection({
                "acc": MultilabelAccuracy(k),
                "f1": MultilabelF1Score(k, average="macro"),
                "auroc": MultilabelAUROC(k),
                "average_precision": MultilabelAveragePrecision(k),
            })
        # No compute groups: the wrapped per-class metrics would share state without their own
        # updates and warn on every epoch.
        return MetricCollection({
            "acc": MulticlassAccuracy(k, average="micro"),
            "balanced_acc": MulticlassAccuracy(k, average="macro"),
            "f1": MulticlassF1Score(k, average="macro"),
            "auroc": MulticlassAUROC(k),
            "recall": ClasswiseWrapper(MulticlassRecall(k, average=None), labels=names, prefix="recall_"),
            "precision": ClasswiseWrapper(
                MulticlassPrecision(k, average=None), labels=names, prefix="precision_"
            ),
        }, compute_groups=False)

    def update_metrics(self, stage: str, outputs: Tensor, target: Tensor) -> None:
        probs = self.probabilities(outputs)
        self._metrics(stage).update(probs, target)
        if stage != "train":
            self.collected[f"{stage}_probs"].update(probs)
            self.collected[f"{stage}_target"].update(target)

    # ---- operating point -----------------------------------------------------------------
    @property
    def has_operating_point(self) -> bool:
        return bool(self.positive_index) and self.hparams.target_recall is not None

    def decision_scores(self, probs: Tensor) -> Tensor:
        """Score of the binary decision: summed probability of the positive classes."""
        return probs[:, self.positive_index].sum(dim=1)

    def _take(self, stage: str) -> tuple[Tensor, Tensor]:
        probs, target = (self.collected[f"{stage}_{k}"] for k in ("probs", "target"))
        out = (probs.compute(), target.compute()) if probs.update_count else (None, None)
        probs.reset()
        target.reset()
        return out

    def on_stage_epoch_end(self, stage: str, values: dict[str, float]) -> None:
        probs, target = self._take(stage)
        if probs is None:
            return
        report: dict[str, Any] = {}
        if self.has_operating_point:
            scores = self.decision_scores(probs)
            positive = torch.isin(target, torch.tensor(self.positive_index, device=target.device))
            # Not from Lightning's sanity check (two batches of an untrained model).
            if stage == "val" and not self.sanity_checking:
                self._choose_threshold(scores, positive)
            threshold = self.operating_threshold()
            rates = op.rates_at_threshold(scores, positive, threshold)
            named = {self.operating_point_names[k]: v for k, v in rates.items()
                     if k in self.operating_point_names}
            logged = {f"{stage}/{k}": v for k, v in named.items() if not math.isnan(v)}
            self.log_dict(logged)
            values = {**values, **logged}
            report = {"operating_point": {
                "rule": f"positive if P({'+'.join(self.class_names[i] for i in self.positive_index)}) >= threshold",
                "target_recall": self.hparams.target_recall, **named,
                **{k: rates[k] for k in ("tp", "fp", "tn", "fn")},
            }, "scores": scores, "positive": positive}
        folder = rank_zero_dir(self.trainer) if stage == "test" else None
        if folder is not None:  # the gathered results, written once
            write_classification_report(
                folder, values, probs, target, self.class_names,
                multilabel=self.multilabel, checkpoint=self.evaluated_checkpoint(), **report,
            )

    def operating_threshold(self) -> float:
        """The threshold chosen on validation; 0.5, said once as a warning, when none was."""
        if not torch.isnan(self.threshold):
            return float(self.threshold)
        if not getattr(self, "_default_threshold_said", False):
            log.warning("no operating point was chosen on validation (no validation run, or no "
                        "positive samples in it): deciding at P(positive) >= 0.5")
            self._default_threshold_said = True
        return 0.5

    def _choose_threshold(self, scores: Tensor, positive: Tensor) -> None:
        if positive.sum() == 0:
            log.warning("validation split has no positive samples: operating point left unchanged")
            return
        goal = self.hparams.target_recall
        value = (op.youden_threshold(scores, positive) if goal == "youden"
                 else op.threshold_for_recall(scores, positive, float(goal)))
        self.threshold.fill_(value)

    # ---- prediction ----------------------------------------------------------------------
    def prediction_writer(self) -> ClassificationCSVWriter:
        return ClassificationCSVWriter()

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        probs = self.probabilities(self(batch["image"])).float()
        out: dict[str, Any] = {"id": list(batch.get("id", [])), "probs": probs.cpu(),
                               "class_names": self.class_names, "multilabel": self.multilabel}
        if self.has_operating_point:
            threshold = self.operating_threshold()
            scores = self.decision_scores(probs)
            out.update(score=scores.cpu(), threshold=threshold, decision=(scores >= threshold).cpu())
        return out
