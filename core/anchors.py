"""Anchor sizes and aspect ratios for anchor-based detectors, by default derived from the data.

torchvision's defaults were tuned on COCO images of ~800 px: anchors of 32..512 px. Factory
defects, seedlings or nodules are often 5-30 px on 64-512 px inputs, where those anchors
overlap no object well enough to be a positive match. So the sizes are read off the training
boxes, while each pyramid level keeps the objects its stride can resolve.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

# Anchor counts are fixed per detector so the head's shape does not depend on the data: a
# checkpoint's weights fit whatever anchors were derived, and nothing has to be rebuilt (or
# re-copied by the EMA callback) when the anchors are set from the training boxes.
SIZES_PER_LEVEL = {"retinanet": 3, "faster_rcnn": 1, "mask_rcnn": 1}
NUM_RATIOS = 3
DEFAULT_RATIOS = (0.5, 1.0, 2.0)
# torchvision's smallest anchor (32 px) on the finest level, doubling per level.
BASE_SIZE = 32.0


def default_anchor_sizes(num_levels: int, per_level: int) -> list[list[float]]:
    """torchvision's anchors: 32 px on the finest level, doubling per level; ``per_level``
    octave scales (``2**(i/per_level)``) on each, as RetinaNet uses three."""
    return [[float(int(BASE_SIZE * 2**level * 2 ** (i / per_level))) for i in range(per_level)]
            for level in range(num_levels)]


def box_levels(boxes: np.ndarray, num_levels: int) -> np.ndarray:
    """The pyramid level of each box: the one whose default anchor size is nearest its
    ``sqrt(area)`` on a log scale (level ``round(log2(sqrt(area) / 32))``, clipped)."""
    side = np.sqrt(_areas(boxes))
    return np.clip(np.rint(np.log2(side / BASE_SIZE)), 0, num_levels - 1).astype(int)


def derive_anchor_sizes(boxes: np.ndarray, num_levels: int, per_level: int) -> list[list[float]]:
    """Anchor sizes (sqrt of the anchor area, px) per level from training boxes ``(N, 4)`` xyxy.

    Each box goes to the level of :func:`box_levels`; a level's ``per_level`` sizes are the
    ``(j + 0.5) / per_level`` quantiles of its boxes' ``sqrt(area)``, rounded to whole pixels
    (at least 1). A level without boxes keeps torchvision's default sizes.
    """
    boxes = _valid(boxes)
    side = np.sqrt(_areas(boxes))
    levels = box_levels(boxes, num_levels)
    defaults = default_anchor_sizes(num_levels, per_level)
    quantiles = [(j + 0.5) / per_level for j in range(per_level)]
    sizes = []
    for level in range(num_levels):
        here = side[levels == level]
        if here.size == 0:
            sizes.append(defaults[level])
        else:
            sizes.append([float(max(1, round(v))) for v in np.quantile(here, quantiles)])
    return sizes


def derive_aspect_ratios(boxes: np.ndarray, count: int = NUM_RATIOS) -> list[float]:
    """``count`` aspect ratios (height / width, torchvision's convention): the
    ``(j + 0.5) / count`` quantiles of the training boxes' ratios, rounded to 2 decimals.

    Duplicates are kept (square objects give ``[1.0, 1.0, 1.0]``) so the anchor count, and with
    it the head's shape, does not depend on the data.
    """
    boxes = _valid(boxes)
    ratio = (boxes[:, 3] - boxes[:, 1]) / (boxes[:, 2] - boxes[:, 0])
    quantiles = [(j + 0.5) / count for j in range(count)]
    return [max(0.01, round(float(v), 2)) for v in np.quantile(ratio, quantiles)]


def check_anchor_sizes(sizes: Sequence[Sequence[float]], num_levels: int) -> list[list[float]]:
    """Validate user-given anchor sizes: one list per pyramid level, the same count on each."""
    sizes = [[float(s) for s in level] for level in sizes]
    if len(sizes) != num_levels:
        raise ValueError(
            f"anchor_sizes has {len(sizes)} levels but the feature pyramid has {num_levels}; "
            f"give one list of sizes per level, e.g. {default_anchor_sizes(num_levels, 1)}")
    counts = {len(level) for level in sizes}
    if len(counts) != 1 or 0 in counts:
        raise ValueError(f"anchor_sizes {sizes}: every level needs the same, non-zero number of "
                         "sizes (the head predicts the same anchors at every level)")
    if any(not math.isfinite(s) or s <= 0 for level in sizes for s in level):
        raise ValueError(f"anchor_sizes {sizes}: sizes are sqrt(anchor area) in pixels, all > 0")
    return sizes


def check_aspect_ratios(ratios: Sequence[float]) -> list[float]:
    """Validate user-given aspect ratios (height / width, all > 0)."""
    ratios = [float(r) for r in ratios]
    if not ratios or any(not math.isfinite(r) or r <= 0 for r in ratios):
        raise ValueError(f"aspect_ratios {ratios}: give one or more height/width ratios > 0, "
                         "e.g. [0.5, 1.0, 2.0]")
    return ratios


def _areas(boxes: np.ndarray) -> np.ndarray:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _valid(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    if not keep.any():
        raise ValueError("no training box with positive width and height to derive anchors from")
    return boxes[keep]
