"""Instance masks: polygons and RLE rasterised, and mask images cut into connected components.

Coordinates are continuous pixel-edge coordinates throughout: pixel ``(row i, column j)``
covers ``[j, j+1) x [i, i+1)``, so a component over columns 3..5 has the box ``x0=3, x1=6``
and an image of width W spans ``0..W``. COCO, YOLO and albumentations' ``pascal_voc`` use the
same convention, so boxes scale with the image by plain multiplication.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from core.errors import DataError

log = logging.getLogger(__name__)

# Diagonal neighbours belong to one object: a thin diagonal scratch is one defect, not many.
CONNECTIVITY = 8


# ---- polygons and RLE (COCO, YOLO-seg) -----------------------------------------------------
def polygon_mask(polygons: Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
    """Rasterise polygons (flat ``[x1, y1, x2, y2, ...]`` lists, pixel-edge coordinates) into
    one ``(H, W)`` uint8 0/1 mask: a pixel is set when its centre is inside a polygon (even-odd
    rule, half-open on the right and bottom, so a rectangle [10, 30] covers exactly 20 columns).

    Several polygons of one object (COCO writes a split object as several) are united.
    """
    mask = np.zeros((height, width), np.uint8)
    for poly in polygons:
        xy = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
        x0, y0 = xy[:, 0], xy[:, 1]
        x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
        first = max(int(np.ceil(y0.min() - 0.5)), 0)
        last = min(int(np.ceil(y0.max() - 0.5)), height)
        for row in range(first, last):
            yc = row + 0.5
            crossing = (y0 <= yc) != (y1 <= yc)  # edges spanning this row of pixel centres
            xs = np.sort(x0[crossing] + (yc - y0[crossing]) * (x1[crossing] - x0[crossing])
                         / (y1[crossing] - y0[crossing]))
            for a, b in zip(xs[0::2], xs[1::2], strict=False):
                start, stop = max(int(np.ceil(a - 0.5)), 0), min(int(np.ceil(b - 0.5)), width)
                if stop > start:
                    mask[row, start:stop] = 1
    return mask


def rle_mask(rle: dict[str, Any], height: int, width: int) -> np.ndarray:
    """Decode a COCO run-length encoding into an ``(H, W)`` uint8 0/1 mask.

    Uncompressed RLE (``counts`` a list: alternating background/foreground run lengths in
    column-major order) is decoded here; compressed RLE (``counts`` a string) needs pycocotools.

    Raises:
        DataError: compressed RLE without pycocotools, or counts that do not fill the image.
    """
    counts = rle.get("counts")
    if isinstance(counts, (str, bytes)):
        try:
            from pycocotools import mask as coco_mask
        except ImportError as err:
            raise DataError("a segmentation is compressed RLE, which needs pycocotools: "
                            "pip install pycocotools, or set instance_masks: false") from err
        encoded = {"size": [height, width], "counts": counts.encode() if isinstance(counts, str) else counts}
        return np.asarray(coco_mask.decode(encoded), dtype=np.uint8)
    runs = np.asarray(counts, dtype=np.int64)
    if runs.ndim != 1 or (runs < 0).any() or runs.sum() != height * width:
        raise DataError(f"RLE counts sum to {int(runs.sum()) if runs.ndim == 1 else '?'}, not "
                        f"{height}x{width}={height * width} pixels; re-export the segmentation")
    values = np.arange(len(runs)) % 2  # runs alternate 0, 1, 0, ... starting with background
    flat = np.repeat(values.astype(np.uint8), runs)
    return flat.reshape(width, height).T.copy()  # column-major, as COCO stores it


@dataclass(frozen=True)
class ShapeMasks:
    """Instance masks drawn from shapes: per object a list of polygons, or an RLE dict.

    Attributes:
        shapes: one entry per object: ``list`` of flat polygons, or a COCO RLE ``dict``.
        normalized: polygon coordinates are fractions of the image size (YOLO), not pixels.
    """

    shapes: tuple[Any, ...]
    normalized: bool = False

    def render(self, height: int, width: int) -> np.ndarray:
        """``(N, H, W)`` uint8 0/1 masks at the stored image size."""
        out = np.zeros((len(self.shapes), height, width), np.uint8)
        for k, shape in enumerate(self.shapes):
            if isinstance(shape, dict):
                out[k] = rle_mask(shape, height, width)
            else:
                scale = np.array([width, height], np.float64) if self.normalized else np.ones(2)
                polys = [(np.asarray(p, np.float64).reshape(-1, 2) * scale).ravel() for p in shape]
                out[k] = polygon_mask(polys, height, width)
        return out


# ---- mask images -> objects ------------------------------------------------------------------
def read_mask_image(path: str | Path) -> np.ndarray:
    """A mask file as an ``(H, W)`` integer array of its stored values.

    Palette masks keep their indices (class codes, as VOC SegmentationClass stores them); an
    RGB/RGBA mask is accepted when it is gray in colour form (all channels equal).

    Raises:
        DataError: missing, unreadable, or a colour mask whose channels differ.
    """
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            array = np.asarray(img)
    except FileNotFoundError as err:
        raise DataError(f"mask '{path}' does not exist") from err
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"cannot read mask '{path}' ({err}); the file is corrupt or not an image") from err
    if array.ndim == 3:
        colour = array[:, :, :3] if array.shape[2] >= 3 else array[:, :, :1]
        if (colour != colour[:, :, :1]).any():
            raise DataError(f"mask '{path}' is a colour image ({mode}) with differing channels; save "
                            "masks as one channel (gray or palette) holding class values")
        array = colour[:, :, 0]
    if array.dtype == bool:
        array = array.astype(np.uint8)
    return array


def binary_threshold(mask: np.ndarray) -> float:
    """Default foreground threshold of a binary mask: half its full scale.

    0/1 masks (and float masks) -> 0.5; masks with larger values -> half the integer range
    (128 for 8 bit), so anti-aliased 0..255 edges count as object only where they are more
    object than not (the magnetic-tile data set's masks need exactly this).
    """
    if not np.issubdtype(mask.dtype, np.integer) or mask.max(initial=0) <= 1:
        return 0.5
    return (int(np.iinfo(mask.dtype).max) + 1) / 2


@dataclass(frozen=True)
class Components:
    """Objects found in a mask: one per connected component of each class.

    Attributes:
        boxes: ``(N, 4)`` float32 xyxy in pixel-edge coordinates.
        classes: ``(N,)`` index into the class values (0 for a binary mask).
        masks: ``(N, H, W)`` uint8 0/1 instance masks, or None when not asked for.
        dropped: components left out for being smaller than ``min_area``.
    """

    boxes: np.ndarray
    classes: np.ndarray
    masks: np.ndarray | None
    dropped: int


def mask_components(mask: np.ndarray, values: Sequence[int] | None = None,
                    threshold: float | None = None, min_area: int = 1,
                    with_masks: bool = False) -> Components:
    """Objects of a mask: connected components (8-connected) of each class.

    Args:
        mask: ``(H, W)`` mask values.
        values: class values (``mask == value`` is class ``i``, in list order); None: binary,
            ``mask >= threshold`` is the one class.
        threshold: binary foreground threshold; None: :func:`binary_threshold`.
        min_area: components with fewer pixels are dropped (speckle, anti-aliasing leftovers).
        with_masks: also return each component's mask.

    Components are ordered by class, then top-to-bottom by their first pixel, so the same
    mask always gives the same objects in the same order.
    """
    if values is None:
        layers = [mask >= (binary_threshold(mask) if threshold is None else threshold)]
    else:
        layers = [mask == v for v in values]
    boxes, classes, masks, dropped = [], [], [], 0
    for k, layer in enumerate(layers):
        if not layer.any():
            continue
        n, labels, stats, _ = cv2.connectedComponentsWithStats(layer.astype(np.uint8), connectivity=CONNECTIVITY)
        for c in range(1, n):
            x, y, w, h, area = (int(v) for v in stats[c])
            if area < min_area:
                dropped += 1
                continue
            boxes.append((x, y, x + w, y + h))
            classes.append(k)
            if with_masks:
                masks.append((labels == c).astype(np.uint8))
    shape = mask.shape[:2]
    return Components(
        boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
        classes=np.asarray(classes, np.int64),
        masks=(np.stack(masks) if masks else np.zeros((0, *shape), np.uint8)) if with_masks else None,
        dropped=dropped,
    )


@dataclass(frozen=True)
class ComponentMasks:
    """Instance masks cut from a mask file, recomputed when a sample is read (so the data set
    never holds every mask in memory); the same arguments give the same objects as the boxes.

    Attributes:
        path: the mask file.
        values: class values (see :func:`mask_components`); None: binary.
        threshold: binary threshold; None: the default.
        min_area: smallest component kept, in pixels.
    """

    path: str
    values: tuple[int, ...] | None
    threshold: float | None
    min_area: int

    def components(self, with_masks: bool = False) -> Components:
        values = list(self.values) if self.values is not None else None
        return mask_components(read_mask_image(self.path), values, self.threshold, self.min_area, with_masks)

    def render(self, height: int, width: int) -> np.ndarray:
        """``(N, H, W)`` uint8 0/1 masks (the mask file is the image's size: checked when read)."""
        masks = self.components(with_masks=True).masks
        return masks if masks is not None else np.zeros((0, height, width), np.uint8)
