"""Losses and class weights shared by the tasks."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.nn import functional as F


def balanced_class_weights(counts: Sequence[float] | Tensor) -> Tensor:
    """Inverse-frequency weights ``total / (K * count_k)`` from per-class sample or pixel counts.

    A class with no pixels gets the weight of a one-pixel class; it never occurs as a target,
    so cross-entropy never uses that weight.
    """
    counts = torch.as_tensor(counts, dtype=torch.float32)
    return counts.sum() / (len(counts) * counts.clamp(min=1))


def class_weight_buffer(weights: str | Sequence[float] | None, num_classes: int) -> Tensor | None:
    """The initial ``class_weight`` buffer of a task, after checking the ``class_weights`` option.

    ``"balanced"`` starts as ones and is filled from the training split in ``setup``: the buffer
    must have its final shape from construction on, because weight averaging (EMA) copies the
    model at the start of ``fit`` and pairs its buffers with the model's by position.
    """
    if weights is None:
        return None
    if isinstance(weights, str):
        if weights != "balanced":
            raise ValueError(f"class_weights must be 'balanced', a list or None, got '{weights}'")
        return torch.ones(num_classes)
    if len(weights) != num_classes:
        raise ValueError(f"class_weights has {len(weights)} entries for {num_classes} classes")
    return torch.tensor(list(weights), dtype=torch.float32)


def masked_cross_entropy(
    logits: Tensor, target: Tensor, ignore_index: int, weight: Tensor | None = None
) -> Tensor:
    """Pixel cross-entropy averaged over labelled pixels (weighted like ``F.cross_entropy``).

    Unlike ``F.cross_entropy`` it returns 0 (still attached to the graph) instead of NaN when
    every pixel of the batch is unlabelled, which sparse labels make a normal event.
    """
    valid = target != ignore_index
    per_pixel = F.cross_entropy(logits.float(), target, weight=weight, ignore_index=ignore_index,
                                reduction="none")
    pixel_weight = valid.float() if weight is None else weight[target.where(valid, 0)] * valid
    return per_pixel.sum() / pixel_weight.sum().clamp(min=1e-6)


def soft_dice_loss(logits: Tensor, target: Tensor, ignore_index: int, smooth: float = 1.0) -> Tensor:
    """Multiclass soft Dice loss, ``1 - mean_k dice_k``, over the labelled pixels of the batch.

    Intersections and cardinalities are summed over the whole batch (not per image), which is
    stable for sparse labels and small tiles. ``smooth`` keeps classes absent from the batch
    near zero loss as long as they are not predicted, and penalises them when they are.

    Args:
        logits: ``(B, K, H, W)`` raw scores.
        target: ``(B, H, W)`` class indices, ``ignore_index`` for unlabelled pixels.
        ignore_index: label of unlabelled pixels.
        smooth: additive smoothing of numerator and denominator.
    """
    num_classes = logits.shape[1]
    valid = (target != ignore_index).unsqueeze(1)
    probs = logits.float().softmax(dim=1) * valid
    onehot = F.one_hot(target.where(target != ignore_index, 0), num_classes)
    onehot = onehot.permute(0, 3, 1, 2).to(probs.dtype) * valid
    dims = (0, 2, 3)
    intersection = (probs * onehot).sum(dims)
    cardinality = probs.sum(dims) + onehot.sum(dims)
    dice = (2 * intersection + smooth) / (cardinality + smooth)
    return 1 - dice.mean()
