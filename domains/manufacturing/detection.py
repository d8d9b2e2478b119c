"""Defect detection: where the scratch is, from factory image folders with masks or from a
COCO/YOLO/VOC annotation file."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from core.annotation_formats import MaskPair, parse_mask_pairs
from core.annotations import AnnotationSet, BadAnnotationPolicy, check_parsed
from core.data import DEFAULT_MASK_PATTERNS, DataError, find_mask
from core.detection_data import DetectionDataModule
from domains.manufacturing.folder import scan_defect_folders

log = logging.getLogger(__name__)


class DefectDetectionDataModule(DetectionDataModule):
    """Defect boxes from ``root/<defect class>/`` image folders with masks beside the images
    (the magnetic-tile layout), or from an annotation file (``annotations``: COCO JSON, YOLO
    folder, VOC XML; see :class:`~core.detection_data.DetectionDataModule`).

    With ``root``, every connected component of an image's mask is one defect of the image's
    folder class (anti-aliased masks are thresholded at half their full scale, 128 for 8 bit;
    components under ``min_mask_area`` pixels are dropped). Masks are the files the
    classification datamodule leaves out as masks: ``x.png`` beside ``x.jpg``, ``x_mask.png``,
    ``masks/x.png`` ... (``mask_patterns``). The ``good_class`` folder holds defect-free parts:
    its images are negatives (a mask there must be empty). In a defect folder an image without a
    mask, or with an empty one, is a bad annotation: it would train as defect-free.

    Args:
        root: folder of class folders (one per defect class, plus ``good_class``). Use either
            ``root`` or ``annotations``.
        good_class: the folder of defect-free images.
        extensions: image file endings to use in class folders; default all common image types.
        mask_patterns: where masks are stored beside images (see
            :data:`core.data.DEFAULT_MASK_PATTERNS`, the default).
        **kwargs: options of :class:`~core.detection_data.DetectionDataModule` (``class_order``
            fixes the defect classes; ``annotations`` + ``format`` instead of ``root``).
    """

    def __init__(
        self,
        root: str | None = None,
        good_class: str = "good",
        extensions: list[str] | None = None,
        mask_patterns: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if (root is None) == (kwargs.get("annotations") is None):
            raise DataError("give exactly one of data.init_args.root (defect class folders with masks) "
                            "or data.init_args.annotations (a COCO/YOLO/VOC annotation file or folder)")
        if root is not None and kwargs.get("mask_values") is not None:
            raise DataError("mask_values does not apply to root folders (each folder is one defect "
                            "class, its masks binary); remove it")

    def read_annotation_set(self, policy: BadAnnotationPolicy) -> AnnotationSet:
        h = self.hparams
        if h.root is None:
            return super().read_annotation_set(policy)
        files, folders, classes = scan_defect_folders(h.root, h.extensions, h.mask_patterns)
        if h.good_class not in classes:
            log.warning("no folder named good_class '%s' in '%s' (folders: %s): no defect-free images; "
                        "set data.init_args.good_class to the defect-free folder", h.good_class, h.root,
                        classes)
        defects = [c for c in classes if c != h.good_class]
        patterns = DEFAULT_MASK_PATTERNS if h.mask_patterns is None else h.mask_patterns
        listings: dict[Path, tuple[list[str], list[Path]]] = {}
        pairs = [MaskPair(f, find_mask(f, patterns, listings), None if folder == h.good_class else folder,
                          "none" if folder == h.good_class else "objects")
                 for f, folder in zip(files, folders, strict=True)]
        parsed = parse_mask_pairs(pairs, h.class_order or defects, None, h.mask_threshold, h.min_mask_area,
                                  hint="; if this folder holds defect-free parts, set "
                                       "data.init_args.good_class to its name")
        return check_parsed(parsed, self.annotation_options(), policy)
