"""Instance masks as COCO run-length encoding, numpy only (no pycocotools, no torch).

One policy for both prediction paths (the torch-free bundle predictor,
:mod:`core.predict_detection`, and Lightning's ``predict``, :mod:`core.detection_writer`): a
Mask R-CNN mask of probabilities at the network-input size is resized (bilinear, as
:func:`core.preprocess.resize_image` resizes images) to the stored image's pixels, the grid its
boxes are reported in, then binarised at :data:`MASK_THRESHOLD`, and written as an
*uncompressed* COCO RLE ``{"size": [height, width], "counts": [...]}``: run lengths of the
column-major (Fortran-order) pixels, starting with the count of zeros (0 when the first pixel is
set). ``pycocotools.mask.frPyObjects(rle, h, w)`` turns it into the compressed form that
``pycocotools.mask.decode``, ``area`` and ``COCO.loadRes`` take; ``COCO(path)`` and ``COCOeval``
read it as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from core.preprocess import resize_image

# A pixel belongs to the instance when its mask probability is above 0.5: the binarisation of
# torchvision's Mask R-CNN examples and of COCO segm evaluation, and the one the task's own
# validation mAP (``segm_*``) uses, so predicted masks are the ones the reported metric scored.
MASK_THRESHOLD = 0.5


def rle_encode(mask: np.ndarray) -> dict[str, Any]:
    """Uncompressed COCO RLE of a 2-D mask (any dtype; nonzero is set)."""
    if mask.ndim != 2:
        raise ValueError(f"an instance mask must be 2-D (height, width), got shape {mask.shape}")
    flat = np.asarray(mask).ravel(order="F") != 0
    if not flat.size:
        return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": []}
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate(([0], changes, [flat.size])))
    counts = ([0] if flat[0] else []) + runs.tolist()
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(c) for c in counts]}


def rle_decode(rle: dict[str, Any]) -> np.ndarray:
    """The boolean ``(height, width)`` mask of an uncompressed COCO RLE (inverse of :func:`rle_encode`)."""
    (h, w), counts = rle["size"], rle["counts"]
    if isinstance(counts, str | bytes):
        raise ValueError("this is a compressed COCO RLE (counts is a string): decode it with "
                         "pycocotools.mask.decode")
    if sum(counts) != h * w:
        raise ValueError(f"RLE counts sum to {sum(counts)}, not height*width = {h * w}")
    values = np.arange(len(counts)) % 2 == 1  # runs alternate zeros, ones, zeros, ...
    return np.repeat(values, counts).reshape((w, h)).T


def stored_mask(probabilities: np.ndarray, stored_hw: Sequence[int]) -> np.ndarray:
    """A mask of probabilities ``(H, W)`` (or ``(1, H, W)``) at the network-input size -> the
    boolean mask in the stored image's pixels: bilinear resize, then ``> MASK_THRESHOLD``."""
    probs = np.asarray(probabilities, np.float32)
    if probs.ndim == 3 and probs.shape[0] == 1:
        probs = probs[0]
    if probs.ndim != 2:
        raise ValueError(f"instance-mask probabilities must be (H, W) or (1, H, W), got {probs.shape}")
    resized = resize_image(probs[:, :, None], (int(stored_hw[0]), int(stored_hw[1])))[:, :, 0]
    return resized > MASK_THRESHOLD


def segmentation(probabilities: np.ndarray, stored_hw: Sequence[int]) -> tuple[dict[str, Any], int]:
    """``(segmentation, area)`` of one detection: the uncompressed RLE of :func:`stored_mask`
    and its pixel count (COCO's ``area`` of a segmentation)."""
    mask = stored_mask(probabilities, stored_hw)
    return rle_encode(mask), int(mask.sum())
