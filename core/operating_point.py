"""Operating points for binary decisions: a score threshold chosen on validation data.

Convention everywhere in this project: a sample is flagged positive when ``score >= threshold``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchmetrics.functional.classification import binary_roc


def threshold_for_recall(scores: Tensor, targets: Tensor, target_recall: float) -> float:
    """Highest threshold whose recall (sensitivity) on ``scores`` reaches ``target_recall``.

    The highest such threshold flags the fewest negatives, i.e. it has the lowest false
    positive rate among thresholds that meet the recall target.
    """
    if not 0.0 < target_recall <= 1.0:
        raise ValueError(f"target_recall must be in (0, 1], got {target_recall}")
    positives = scores[targets.bool()].flatten().sort(descending=True).values
    if positives.numel() == 0:
        raise ValueError("no positive samples: a recall target cannot be placed")
    # The k-th highest positive score is the largest threshold that keeps k positives.
    k = max(1, math.ceil(target_recall * positives.numel() - 1e-9))
    return float(positives[k - 1])


def youden_threshold(scores: Tensor, targets: Tensor) -> float:
    """Threshold maximising Youden's J = sensitivity + specificity - 1 on the ROC curve."""
    fpr, tpr, thresholds = binary_roc(scores.float(), targets.long())
    best = int(torch.argmax(tpr - fpr))
    return float(min(thresholds[best], 1.0))


def rates_at_threshold(scores: Tensor, targets: Tensor, threshold: float) -> dict[str, float]:
    """Confusion counts and rates when ``score >= threshold`` is called positive."""
    pred = scores >= threshold
    truth = targets.bool()
    tp = int((pred & truth).sum())
    fp = int((pred & ~truth).sum())
    tn = int((~pred & ~truth).sum())
    fn = int((~pred & truth).sum())

    def ratio(a: int, b: int) -> float:
        return a / b if b else float("nan")

    return {
        "threshold": float(threshold),
        "recall": ratio(tp, tp + fn),
        "specificity": ratio(tn, tn + fp),
        "precision": ratio(tp, tp + fp),
        "false_positive_rate": ratio(fp, fp + tn),
        "tp": tp, "fp": fp, "tn": tn, "fn": fn,
    }
