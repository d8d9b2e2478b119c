"""Boundary and overlap metrics for segmentation masks that torchmetrics lacks or needs wrapped."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.functional.segmentation.utils import edge_surface_distance
from torchmetrics.segmentation import DiceScore


def _drop_ignored(preds: Tensor, target: Tensor, ignore_index: int | None) -> tuple[Tensor, Tensor]:
    # Ignored pixels become agreeing background: neutral for foreground-only metrics.
    if ignore_index is None:
        return preds, target
    keep = target != ignore_index
    return preds.where(keep, 0), target.where(keep, 0)


class ForegroundDice(DiceScore):
    """torchmetrics' Dice over the foreground classes of index masks, honouring ``ignore_index``."""

    def __init__(self, num_classes: int, ignore_index: int | None = None, **kwargs) -> None:
        super().__init__(num_classes=num_classes, include_background=False, average="macro",
                         input_format="index", **kwargs)
        self.ignore_index = ignore_index

    def update(self, preds: Tensor, target: Tensor) -> None:
        super().update(*_drop_ignored(preds, target, self.ignore_index))


class HausdorffDistance95(Metric):
    """95th-percentile symmetric Hausdorff distance (HD95) of the foreground classes.

    Per image and class, the larger of the two directed 95th percentiles of boundary distances
    (the usual HD95 definition); averaged over the image/class pairs where both prediction and
    reference are non-empty. Pairs with exactly one empty mask have no finite distance and are
    counted in ``missed`` instead. Distances are in pixels times ``spacing`` (e.g. mm).
    """

    full_state_update = False

    def __init__(self, num_classes: int, ignore_index: int | None = None,
                 spacing: Sequence[float] | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.spacing = list(spacing) if spacing is not None else None
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("pairs", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("missed", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        preds, target = _drop_ignored(preds, target, self.ignore_index)
        for p_img, t_img in zip(preds, target, strict=True):
            for c in range(1, self.num_classes):
                p, t = p_img == c, t_img == c
                if not p.any() and not t.any():
                    continue
                if not p.any() or not t.any():
                    self.missed += 1
                    continue
                d_pt, d_tp = edge_surface_distance(p, t, spacing=self.spacing, symmetric=True)
                hd95 = torch.maximum(torch.quantile(d_pt.double(), 0.95), torch.quantile(d_tp.double(), 0.95))
                self.total += hd95
                self.pairs += 1

    def compute(self) -> Tensor:
        return self.total / self.pairs if self.pairs > 0 else torch.tensor(float("nan"))
