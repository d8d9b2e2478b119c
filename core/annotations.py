"""Object annotations in the formats teams already have, checked once against their images.

:func:`read_annotations` parses COCO JSON, YOLO txt folders, Pascal VOC XML or masks (see
:mod:`core.annotation_formats`), opens every image once (missing, empty or corrupt files are
found at setup, not in epoch 7), and checks every box in pixels of the stored image:

* a non-number (NaN, inf), ``x1 < x0`` or ``y1 < y0``, or a box with zero width or height
  is bad;
* a box reaching outside the image by at most ``box_tolerance`` pixels (annotation tools
  round, and VOC's 1-based ``xmax = W`` lands on the border) is clipped to the image; further
  out is bad (annotations made for another image size, or normalised/pixel units mixed up);
* a class outside ``class_order`` is bad, with the closest known name suggested.

Each bad image follows ``on_bad_annotation``: ``error`` stops with one message naming the
annotation file, the row or object and the fix; ``skip`` leaves the whole image out (kept
without the bad box, the object would train as background) and lists it in the datamodule's
``skipped`` list, written to ``skipped_files.csv`` in the run directory.
"""

from __future__ import annotations

import difflib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from core.annotation_formats import (
    YOLO_NAME_FILES,
    YOLO_YAML_FILES,
    AnnotationError,
    CrowdPolicy,
    Draft,
    Parsed,
    pair_masks,
    parse_coco,
    parse_mask_pairs,
    parse_voc,
    parse_yolo,
)
from core.errors import DataError
from core.filescan import ImageInfo, inspect_image
from core.instance_masks import ComponentMasks, ShapeMasks
from core.preprocess import IMAGE_EXTENSIONS, is_hidden

log = logging.getLogger(__name__)

AnnotationFormat = Literal["auto", "coco", "yolo", "voc", "masks"]
OnBadAnnotation = Literal["error", "skip"]
FORMATS = ("coco", "yolo", "voc", "masks")
_SHOW = 10  # bad images named in the skip warning; the rest are counted


@dataclass(frozen=True)
class AnnotationOptions:
    """How annotations are read and checked (the datamodule's options of the same names).

    Attributes:
        images: folder the annotations' image names are relative to; None: found beside them.
        class_order: the valid classes in class-index order; None: the classes the file
            declares (COCO categories by id, YOLO names), else the sorted names found (VOC).
        box_tolerance: pixels a box may reach outside the image and be clipped.
        instance_masks: also read each object's mask (COCO/YOLO polygons, RLE, masks).
        keep_difficult: keep VOC ``<difficult>1`` objects.
        crowd: COCO ``iscrowd`` annotations: ``drop`` or ``keep``.
        mask_values: masks format: class values of multi-class masks; None: binary masks.
        mask_threshold: masks format: binary foreground threshold; None: half full scale.
        min_mask_area: masks format: smallest connected component kept, in pixels.
    """

    images: str | None = None
    class_order: Sequence[str] | None = None
    box_tolerance: float = 2.0
    instance_masks: bool = False
    keep_difficult: bool = True
    crowd: CrowdPolicy = "drop"
    mask_values: Sequence[int] | None = None
    mask_threshold: float | None = None
    min_mask_area: int = 4


@dataclass(frozen=True)
class ImageAnnotations:
    """One image and its objects, checked against the image file.

    Attributes:
        info: the decoded image's file, mode and size.
        boxes: ``(N, 4)`` float32 xyxy in pixel-edge coordinates of the stored image, inside it.
        labels: class name per box.
        rows: per box, its place in ``source`` (``annotation id 17``, ``line 3``, ``object 2``).
        source: the annotation file (or mask) the boxes came from.
        masks: renders ``(N, H, W)`` uint8 instance masks; None unless instance masks were asked.
        split: train/val/test when the annotations fix it, else None.
    """

    info: ImageInfo
    boxes: np.ndarray
    labels: tuple[str, ...]
    rows: tuple[str, ...] = ()
    source: str = ""
    masks: ShapeMasks | ComponentMasks | None = None
    split: str | None = None

    @property
    def path(self) -> str:
        return self.info.path

    @property
    def height(self) -> int:
        return self.info.height

    @property
    def width(self) -> int:
        return self.info.width

    def render_masks(self) -> np.ndarray:
        """``(N, H, W)`` uint8 0/1 instance masks at the stored image size."""
        if self.masks is None:
            raise DataError(f"'{self.path}' has no instance masks; set instance_masks: true with a "
                            "format that has them (COCO/YOLO polygons, masks)")
        return self.masks.render(self.height, self.width)

    @classmethod
    def negative(cls, info: ImageInfo) -> ImageAnnotations:
        """An image without objects (prediction inputs, defect-free parts)."""
        return cls(info, np.zeros((0, 4), np.float32), ())


@dataclass
class AnnotationSet:
    """The checked images and the class names, in class-index order."""

    images: list[ImageAnnotations]
    class_names: list[str]
    notes: list[str] = field(default_factory=list)


class BadAnnotation(Exception):
    """One image's annotations are unusable (internal: the policy turns it into an error or a skip)."""


class BadAnnotationPolicy:
    """``on_bad_annotation``: raise the problem, or record it in ``skipped`` as (path, reason).

    Args:
        on_bad: ``error`` or ``skip``.
        skipped: the list that skipped problems are appended to.
        left_out: what a skip leaves out, for the error's hint (``the image``; a scene's
            ``the feature``).
    """

    def __init__(self, on_bad: OnBadAnnotation, skipped: list[tuple[str, str]],
                 left_out: str = "the image") -> None:
        if on_bad not in ("error", "skip"):
            raise DataError(f"on_bad_annotation is '{on_bad}'; use error or skip")
        self.on_bad, self.skipped, self.count, self.left_out = on_bad, skipped, 0, left_out

    def __call__(self, path: str, problem: str) -> None:
        if self.on_bad == "error":
            raise AnnotationError(f"{problem} (or set data.init_args.on_bad_annotation: skip to leave "
                                  f"{self.left_out} out and list it in skipped_files.csv)")
        self.skipped.append((path, problem))
        self.count += 1


# ---- format detection ------------------------------------------------------------------------
def detect_format(path: Path) -> str:
    """The annotation format of ``path``, from explicit evidence only: a ``.json`` file is COCO,
    ``.xml`` VOC, ``.yaml`` YOLO; a folder with data.yaml/classes.txt or ``labels/`` is YOLO,
    one with XML files VOC, one with images only masks.

    Raises:
        DataError: the path is missing or its format is unclear (naming ``format``).
    """
    suffix = path.suffix.lower()
    if path.is_file():
        by_suffix = {".json": "coco", ".xml": "voc", ".yaml": "yolo", ".yml": "yolo"}
        if suffix in by_suffix:
            return by_suffix[suffix]
        raise DataError(f"cannot tell the annotation format of '{path}' from its suffix; set "
                        f"data.init_args.format to one of {list(FORMATS)}")
    if not path.is_dir():
        raise DataError(f"annotations '{path}' do not exist; set data.init_args.annotations to a COCO "
                        "JSON, a YOLO folder or data.yaml, a folder of VOC XML files or of masks")
    if any((path / n).is_file() for n in (*YOLO_YAML_FILES, *YOLO_NAME_FILES)) or (path / "labels").is_dir():
        return "yolo"
    files = [p for p in path.rglob("*") if p.is_file() and not is_hidden(p.relative_to(path))]
    kinds = {s for s in (p.suffix.lower() for p in files)}
    found = [f for f, hit in (("voc", ".xml" in kinds), ("yolo", ".txt" in kinds),
                              ("coco", ".json" in kinds)) if hit]
    if len(found) == 1:
        return found[0]
    if not found and kinds & set(IMAGE_EXTENSIONS):
        return "masks"
    raise DataError(f"cannot tell the annotation format of folder '{path}' (found "
                    f"{sorted(kinds) or 'no files'}); set data.init_args.format to one of {list(FORMATS)}")


def parse(path: str | Path, fmt: AnnotationFormat, options: AnnotationOptions) -> Parsed:
    """Parse annotations of format ``fmt`` (``auto``: :func:`detect_format`)."""
    path = Path(path).expanduser()
    if fmt == "auto":
        fmt = detect_format(path)  # type: ignore[assignment]
        log.info("annotations '%s' read as %s", path, fmt)
    images = Path(options.images).expanduser() if options.images else None
    if fmt == "coco":
        if path.is_dir():
            found = sorted(path.glob("*.json"))
            if len(found) != 1:
                raise DataError(f"'{path}' holds {len(found)} .json files; set data.init_args.annotations "
                                "to the COCO file itself")
            path = found[0]
        return parse_coco(path, images, options.crowd)
    if fmt == "yolo":
        return parse_yolo(path, options.class_order)
    if fmt == "voc":
        if options.instance_masks:
            raise DataError("Pascal VOC XML has boxes only; set instance_masks: false (or use the VOC "
                            "SegmentationObject masks with format: masks)")
        return parse_voc(path, images, options.keep_difficult)
    if fmt == "masks":
        names = list(options.class_order or [])
        if not names:
            if options.mask_values is not None:
                raise DataError(f"mask_values {list(options.mask_values)} need class_order with one "
                                "class name per value")
            names = ["object"]
            log.warning("binary masks without class_order: every object is class 'object' (set "
                        "data.init_args.class_order: [name] to name it)")
        elif options.mask_values is None and len(names) > 1:
            raise DataError(f"binary masks hold one class, but class_order names {len(names)} {names}; "
                            "set mask_values to the mask value of each class")
        return parse_mask_pairs(pair_masks(path, images), names, options.mask_values,
                                options.mask_threshold, options.min_mask_area)
    raise DataError(f"format is '{fmt}'; use one of {['auto', *FORMATS]}")


# ---- checks ----------------------------------------------------------------------------------
def _fmt(box: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in box) + "]"


def check_box(box: Sequence[float], width: int, height: int, tolerance: float,
              normalized: bool = False) -> tuple[float, float, float, float]:
    """A box (xyxy, stored-image pixels) clipped to the image, or :class:`BadAnnotation`."""
    x0, y0, x1, y1 = (float(v) for v in box)
    shown = f"box xyxy {_fmt(box)} px"
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise BadAnnotation(f"{shown} is not a number (NaN or infinite); fix or delete it")
    if x1 < x0 or y1 < y0:
        axis = "x1 < x0" if x1 < x0 else "y1 < y0"
        raise BadAnnotation(f"{shown} has {axis} (swapped corners or a negative size); fix it")
    overshoot = max(-x0, -y0, x1 - width, y1 - height)
    if overshoot > tolerance:
        hint = (" (YOLO values are fractions 0..1 of the image size, not pixels)" if normalized
                else " (annotations made for another image size?)")
        raise BadAnnotation(f"{shown} reaches {overshoot:.1f} px outside the {width}x{height} image "
                            f"(box_tolerance {tolerance:g} px){hint}; fix the coordinates")
    x0, x1 = min(max(x0, 0.0), width), min(max(x1, 0.0), width)
    y0, y1 = min(max(y0, 0.0), height), min(max(y1, 0.0), height)
    if x1 - x0 <= 0 or y1 - y0 <= 0:
        raise BadAnnotation(f"{shown} has zero width or height inside the image; delete it")
    return x0, y0, x1, y1


def unknown_class(name: str, known: Sequence[str]) -> str:
    """The problem of a class outside ``known``, suggesting the closest known name."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    if not close:  # case-only typos ("Scratch") score low on the raw strings
        lowered = {k.lower(): k for k in known}
        close = [lowered[c] for c in difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.6)]
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return (f"class '{name}' is not in class_order {list(known)}{hint}; fix the label or add the class "
            "to data.init_args.class_order")


def _check_shapes(draft: Draft, width: int, height: int) -> None:
    """Every object has a segmentation that can be drawn on this image."""
    for row, shape in zip(draft.rows, draft.shapes or [None] * len(draft.rows), strict=True):
        if shape is None:
            raise BadAnnotation(f"{row} has no segmentation; instance_masks needs one for every object "
                                "(or set instance_masks: false)")
        if isinstance(shape, dict):
            size = shape.get("size")
            if "counts" not in shape or (size is not None and list(size) != [height, width]):
                raise BadAnnotation(f"{row}: RLE segmentation of size {size} does not fit the "
                                    f"{width}x{height} image; re-export it")
        elif not isinstance(shape, list) or not all(
                isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 for p in shape):
            raise BadAnnotation(f"{row}: segmentation is not polygons of x, y pairs (at least 3 "
                                "points each); fix or delete it")


def check_draft(draft: Draft, known: Sequence[str] | None, options: AnnotationOptions) -> ImageAnnotations:
    """Open the image and check the draft's boxes, classes and masks; :class:`BadAnnotation`
    names the annotation file, the row and the fix."""
    where = draft.location
    if draft.problem:
        raise BadAnnotation(f"{where}: {draft.problem}")
    try:
        info = inspect_image(draft.image)
    except DataError as err:
        raise BadAnnotation(f"{where}: {err}") from err
    if draft.declared_size is not None and draft.declared_size != (info.width, info.height):
        what = "mask" if draft.masks is not None else "annotation"
        w, h = draft.declared_size
        raise BadAnnotation(f"{where}: the {what} is {w}x{h} but image '{draft.image}' is "
                            f"{info.width}x{info.height}; it was made for another version of the image: "
                            "re-export it or fix the size")
    boxes = np.asarray(draft.boxes, np.float64).reshape(-1, 4)
    if draft.normalized:
        boxes = boxes * np.array([info.width, info.height, info.width, info.height])
    checked = []
    for box, row, label in zip(boxes, draft.rows, draft.labels, strict=True):
        try:
            checked.append(check_box(box, info.width, info.height, options.box_tolerance, draft.normalized))
        except BadAnnotation as bad:
            raise BadAnnotation(f"{where}: {row}: {bad}") from None
        if known is not None and label not in known:
            raise BadAnnotation(f"{where}: {row}: {unknown_class(label, known)}")
    masks: ShapeMasks | ComponentMasks | None = None
    if options.instance_masks:
        if draft.masks is not None:
            masks = draft.masks
        else:
            try:
                _check_shapes(draft, info.width, info.height)
            except BadAnnotation as bad:
                raise BadAnnotation(f"{where}: {bad}") from None
            masks = ShapeMasks(tuple(draft.shapes or ()), draft.normalized)
    return ImageAnnotations(info, np.asarray(checked, np.float32).reshape(-1, 4), tuple(draft.labels),
                            tuple(draft.rows), draft.source, masks, draft.split)


def check_parsed(parsed: Parsed, options: AnnotationOptions, policy: BadAnnotationPolicy) -> AnnotationSet:
    """Check every draft of a parse (see the module docstring) and settle the class names."""
    for note in parsed.notes:
        log.warning(note)
    for file, problem in parsed.orphans:
        policy(file, problem)
    known = [str(c) for c in options.class_order] if options.class_order else parsed.class_names
    if known is not None and len(set(known)) != len(known):
        raise DataError(f"class_order {known} names a class twice; list each class once")
    images: list[ImageAnnotations] = []
    first_seen: dict[str, str] = {}
    for draft in parsed.drafts:
        try:
            checked = check_draft(draft, known, options)
            key = str(Path(checked.path).resolve())
            if key in first_seen:
                raise BadAnnotation(f"{draft.location}: image '{checked.path}' is also annotated by "
                                    f"{first_seen[key]}; merge the two or delete one")
            first_seen[key] = draft.location
            images.append(checked)
        except BadAnnotation as bad:
            policy(str(draft.image), str(bad))
    if policy.count:
        shown = "\n".join(f"  {p}: {r}" for p, r in policy.skipped[-policy.count:][:_SHOW])
        more = f"\n  ... and {policy.count - _SHOW} more" if policy.count > _SHOW else ""
        log.warning("skipped %d image(s) with bad annotations (listed in skipped_files.csv):\n%s%s",
                    policy.count, shown, more)
    if not images:
        raise DataError("no usable annotated images left; see the skipped files above")
    names = known if known is not None else sorted({label for image in images for label in image.labels})
    if not names:
        raise DataError("no image has an object and no class_order is given; a detector needs at least "
                        "one class: add annotations or set data.init_args.class_order")
    return AnnotationSet(images, list(names), list(parsed.notes))


def read_annotations(path: str | Path, fmt: AnnotationFormat, options: AnnotationOptions,
                     policy: BadAnnotationPolicy) -> AnnotationSet:
    """Parse annotations (``fmt``: coco, yolo, voc, masks or auto) and check them against their
    images (see the module docstring); ``policy`` decides what a bad image does."""
    return check_parsed(parse(path, fmt, options), options, policy)
