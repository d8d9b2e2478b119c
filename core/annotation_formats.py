"""Parsers of the annotation formats teams already have: COCO JSON, YOLO txt folders, Pascal VOC
XML and masks (boxes from connected components).

A parser reads annotation files only, never an image, and returns one :class:`Draft` per
image. A defect found in one image's annotations (a malformed line, an unknown category id, a
box without coordinates) travels with that image's draft as ``problem``, so
:mod:`core.annotations` applies one policy (``on_bad_annotation: error|skip``) to every kind
of defect; a defect that cannot be tied to an image (an XML file that does not parse, an
annotation whose image id is not listed) is an ``orphan``, reported by the same policy. A file
that describes nothing usable (an empty or corrupt COCO JSON) raises :class:`AnnotationError`.

Boxes are xyxy in continuous pixel-edge coordinates of the stored image (see
:mod:`core.instance_masks`), or fractions of the image size for YOLO (``normalized``): only the
checker, which opens the image, knows its size.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import math
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from core.errors import DataError
from core.instance_masks import ComponentMasks, binary_threshold, mask_components, read_mask_image
from core.preprocess import IMAGE_EXTENSIONS, is_hidden

log = logging.getLogger(__name__)

CrowdPolicy = Literal["drop", "keep"]
Box = tuple[float, float, float, float]


class AnnotationError(DataError):
    """A bad annotation file or annotation; the message names the file, the row and the fix."""


@dataclass
class Draft:
    """One image's annotations as parsed, before the image is opened and the boxes checked.

    Attributes:
        image: where the image file should be.
        source: the annotation file, as named in messages.
        where: this image's place in ``source`` (``image id 3 ('a.png')``); empty when the
            file annotates this image only.
        boxes: xyxy per object, pixels of the stored image (or fractions: ``normalized``).
        labels: class name per object.
        rows: per object, its place in ``source`` (``annotation id 17``, ``line 3``).
        normalized: boxes (and polygon shapes) are fractions of the image width/height.
        declared_size: ``(width, height)`` the annotation states, checked against the file.
        shapes: per object a segmentation (polygons list or COCO RLE dict, None if the object
            has none); None when the format has no segmentations.
        masks: the mask file the objects were cut from, for instance masks.
        problem: the first defect found while parsing; the image is bad.
        split: train/val/test when the annotation fixes it.
    """

    image: Path
    source: str
    where: str = ""
    boxes: list[Box] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    rows: list[str] = field(default_factory=list)
    normalized: bool = False
    declared_size: tuple[int, int] | None = None
    shapes: list[Any] | None = None
    masks: ComponentMasks | None = None
    problem: str | None = None
    split: str | None = None

    def bad(self, problem: str) -> None:
        """Record a defect (the first one is reported)."""
        if self.problem is None:
            self.problem = problem

    def add(self, box: Box, label: str, row: str, shape: Any = None) -> None:
        self.boxes.append(box)
        self.labels.append(label)
        self.rows.append(row)
        if self.shapes is not None:
            self.shapes.append(shape)

    @property
    def location(self) -> str:
        """``'file' where``: how messages name this image's annotations."""
        return f"'{self.source}' {self.where}".rstrip()


@dataclass
class Parsed:
    """What a parser found.

    Attributes:
        drafts: one per image.
        class_names: the classes the file declares, in its order (COCO categories by id, YOLO
            names); None when it only names classes on objects (VOC).
        orphans: ``(file, problem)`` defects that belong to no image.
        notes: facts the user should read (label files without images, dropped crowd boxes).
    """

    drafts: list[Draft]
    class_names: list[str] | None = None
    orphans: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def read_text(path: Path, what: str) -> str:
    """A UTF-8 text file; a missing, unreadable or binary file is an AnnotationError."""
    try:
        return path.read_text(encoding="utf-8-sig")  # -sig: Windows tools write a BOM
    except FileNotFoundError as err:
        raise AnnotationError(f"{what} '{path}' does not exist; check data.init_args.annotations") from err
    except (OSError, UnicodeDecodeError) as err:
        raise AnnotationError(f"cannot read {what} '{path}' as text ({err}); the file is corrupt: "
                              "re-export it") from err


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                  and not is_hidden(p.relative_to(folder)))


def _number(value: Any) -> float:
    """A JSON/XML number; strings of numbers are accepted, anything else raises ValueError."""
    if isinstance(value, bool) or value is None:
        raise ValueError(value)
    return float(value)


# ---- COCO -------------------------------------------------------------------------------------
def coco_image_folders(json_path: Path, images: Path | None) -> list[Path]:
    """Where a COCO file's ``file_name`` entries are looked up, in order: ``images`` when given;
    else the JSON's folder, its ``images/`` sub-folder, and ``images/`` beside the JSON's folder
    (CVAT and labelme2coco write ``annotations/instances.json`` beside ``images/``)."""
    if images is not None:
        return [images]
    here = json_path.parent
    return [here, here / "images", here.parent / "images", here.parent]


def parse_coco(path: Path, images: Path | None = None, crowd: CrowdPolicy = "drop") -> Parsed:
    """A COCO detection JSON: ``images``, ``annotations`` (``bbox`` = x, y, width, height) and
    ``categories`` (any ids: classes are the categories in id order).

    Images without annotations are negatives. Crowd annotations (``iscrowd: 1``, one region
    covering many objects) are dropped with ``crowd="drop"``, as torchvision's detection
    references do for training; ``keep`` uses their boxes as ordinary objects.
    """
    text = read_text(path, "COCO annotation file")
    if not text.strip():
        raise AnnotationError(f"COCO annotation file '{path}' is empty; re-export it from the "
                              "annotation tool")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise AnnotationError(f"'{path}' is not valid JSON ({err.msg} at line {err.lineno} column "
                              f"{err.colno}); re-export it from the annotation tool") from err
    missing = [k for k in ("images", "annotations", "categories")
               if not isinstance(data, dict) or not isinstance(data.get(k), list)]
    if missing:
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise AnnotationError(f"'{path}' is not a COCO detection file: it needs lists "
                              f"{missing} (found {found})")
    name = path.name
    categories: dict[Any, str] = {}
    for i, cat in enumerate(data["categories"]):
        if not isinstance(cat, dict) or "id" not in cat or not str(cat.get("name", "")).strip():
            raise AnnotationError(f"'{path}' category #{i} is {cat!r}; each needs an id and a name")
        if cat["id"] in categories:
            raise AnnotationError(f"'{path}' lists category id {cat['id']} twice; ids must be unique")
        categories[cat["id"]] = str(cat["name"]).strip()
    order = sorted(categories, key=lambda c: (str(type(c)), c))
    class_names = [categories[c] for c in order]
    twice = sorted({n for n in class_names if class_names.count(n) > 1})
    if twice:
        raise AnnotationError(f"'{path}' has several categories named {twice}; give each category "
                              "its own name or merge them")

    folders = coco_image_folders(path, images)
    drafts: dict[Any, Draft] = {}
    for i, entry in enumerate(data["images"]):
        if not isinstance(entry, dict) or "id" not in entry or not entry.get("file_name"):
            raise AnnotationError(f"'{path}' image #{i} is {entry!r}; each needs an id and a file_name")
        if entry["id"] in drafts:
            raise AnnotationError(f"'{path}' lists image id {entry['id']} twice; ids must be unique")
        file_name = str(entry["file_name"])
        image = next((f / file_name for f in folders if (f / file_name).is_file()), None)
        draft = Draft(image=image or folders[0] / file_name, source=name,
                      where=f"image id {entry['id']} ('{file_name}')", shapes=[])
        if image is None:
            looked = ", ".join(f"'{f}'" for f in folders)
            draft.bad(f"image '{file_name}' does not exist (looked in {looked}); set "
                      "data.init_args.images to the folder holding the images, or fix file_name")
        try:
            w, h = int(_number(entry.get("width"))), int(_number(entry.get("height")))
            draft.declared_size = (w, h) if w > 0 and h > 0 else None
        except (ValueError, TypeError, OverflowError):
            pass  # width/height are optional in practice; the file's own size is used
        drafts[entry["id"]] = draft

    out = Parsed(list(drafts.values()), class_names)
    crowded = 0
    for i, ann in enumerate(data["annotations"]):
        row = f"annotation id {ann.get('id', '?')} (#{i})" if isinstance(ann, dict) else f"annotation #{i}"
        if not isinstance(ann, dict) or ann.get("image_id") not in drafts:
            image_id = ann.get("image_id") if isinstance(ann, dict) else None
            out.orphans.append((str(path), f"'{name}' {row} refers to image_id {image_id!r}, which is "
                                "not in 'images'; fix the export or delete the annotation"))
            continue
        draft = drafts[ann["image_id"]]
        if ann.get("iscrowd") and crowd == "drop":
            crowded += 1
            continue
        cid = ann.get("category_id")
        if cid not in categories:
            draft.bad(f"{row}: category_id {cid!r} is not among the categories "
                      f"{ {c: categories[c] for c in order} }; fix the annotation or add the category")
            continue
        bbox = ann.get("bbox")
        try:
            x, y, w, h = (_number(v) for v in bbox)
        except (TypeError, ValueError):
            draft.bad(f"{row}: bbox is {bbox!r}, not [x, y, width, height]; fix or delete the annotation")
            continue
        draft.add((x, y, x + w, y + h), categories[cid], row, ann.get("segmentation") or None)

    if crowded:
        out.notes.append(f"dropped {crowded} crowd annotation(s) (iscrowd: 1) of '{name}'; set "
                         "data.init_args.crowd: keep to train on their boxes")
    return out


# ---- YOLO -------------------------------------------------------------------------------------
YOLO_NAME_FILES = ("classes.txt", "obj.names", "classes.names")
YOLO_YAML_FILES = ("data.yaml", "dataset.yaml")
_YOLO_SPLITS = {"train": "train", "val": "val", "valid": "val", "test": "test"}


def yolo_label_file(image: Path) -> Path | None:
    """The label file of an image: ``.../labels/...x.txt`` for ``.../images/...x.jpg`` (the last
    ``images`` folder of the path replaced, as Ultralytics does), else ``x.txt`` beside it."""
    parts = list(image.with_suffix(".txt").parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            candidate = Path(*parts[:i], "labels", *parts[i + 1:])
            if candidate.is_file():
                return candidate
            break
    beside = image.with_suffix(".txt")
    return beside if beside.is_file() else None


def _yaml_names(names: Any, where: str) -> list[str]:
    if isinstance(names, dict):  # Ultralytics writes {0: a, 1: b}
        keys = sorted(names, key=int)
        if [int(k) for k in keys] != list(range(len(keys))):
            raise AnnotationError(f"{where} names ids {keys}; they must be 0..{len(keys) - 1}")
        return [str(names[k]).strip() for k in keys]
    if isinstance(names, list):
        return [str(n).strip() for n in names]
    raise AnnotationError(f"{where} has names {names!r}; give a list of class names")


def _yaml_entry(base: Path, entry: str) -> Path | None:
    """A data.yaml path entry; Roboflow's ``../train/images`` also resolves below ``base``."""
    for candidate in (base / entry, base / entry.lstrip("./").removeprefix("../")):
        if candidate.exists():
            return candidate
    return None


def _yolo_layout(path: Path) -> tuple[Path, dict[str, Any] | None, Path | None]:
    """(dataset root, parsed data.yaml or None, the yaml file)."""
    import yaml

    if path.is_file():
        yaml_file, root = path, path.parent
    else:
        root = path
        yaml_file = next((path / n for n in YOLO_YAML_FILES if (path / n).is_file()), None)
    if yaml_file is None:
        return root, None, None
    try:
        config = yaml.safe_load(read_text(yaml_file, "YOLO data.yaml")) or {}
    except yaml.YAMLError as err:
        raise AnnotationError(f"cannot parse '{yaml_file}' as YAML ({err}); fix the file") from err
    if not isinstance(config, dict):
        raise AnnotationError(f"'{yaml_file}' holds {type(config).__name__}, not a mapping with names "
                              "and train/val folders")
    if config.get("path"):
        given = Path(str(config["path"])).expanduser()
        root = given if given.is_absolute() else yaml_file.parent / given
        if not root.is_dir():
            root = yaml_file.parent  # an exporter's absolute path from another machine
    return root, config, yaml_file


def _yolo_images(root: Path, config: dict[str, Any] | None, yaml_file: Path | None
                 ) -> tuple[list[tuple[Path, str | None]], list[Path]]:
    """(image, split) pairs: the data.yaml split entries when it has them, else every image;
    and the text files that list images (not label files)."""
    entries = {key: config[key] for key in _YOLO_SPLITS if config and config.get(key)}
    if not entries:
        return [(p, None) for p in _image_files(root) if "labels" not in p.relative_to(root).parts], []
    found: list[tuple[Path, str | None]] = []
    lists: list[Path] = []
    for key, value in entries.items():
        for entry in value if isinstance(value, list) else [value]:
            target = _yaml_entry(root, str(entry))
            if target is None:
                raise AnnotationError(f"'{yaml_file}' {key}: '{entry}' does not exist below '{root}'; "
                                      "fix the entry or the yaml's path")
            if target.is_dir():
                found += [(p, _YOLO_SPLITS[key]) for p in _image_files(target)]
            else:  # a text file listing images, one per line, relative to the root
                lists.append(target.resolve())
                for line in read_text(target, "YOLO image list").splitlines():
                    if line.strip():
                        p = Path(line.strip())
                        found.append((p if p.is_absolute() else root / p, _YOLO_SPLITS[key]))
    return found, lists


def yolo_class_names(root: Path, config: dict[str, Any] | None, yaml_file: Path | None,
                     fallback: Sequence[str] | None) -> tuple[list[str], str]:
    """The class names YOLO ids index, and where they came from: data.yaml ``names``, else
    ``classes.txt`` (or ``obj.names``) in the root or ``labels/``, else ``fallback``."""
    if config and config.get("names") is not None:
        return _yaml_names(config["names"], f"'{yaml_file}'"), f"'{yaml_file.name}' names"  # type: ignore[union-attr]
    for folder in (root, root / "labels"):
        for file_name in YOLO_NAME_FILES:
            names_file = folder / file_name
            if names_file.is_file():
                lines = read_text(names_file, "YOLO class names file").splitlines()
                while lines and not lines[-1].strip():
                    lines.pop()
                blank = [i + 1 for i, line in enumerate(lines) if not line.strip()]
                if blank:
                    raise AnnotationError(f"'{names_file}' line {blank[0]} is blank; class ids are line "
                                          "numbers, so a blank line shifts every class after it: delete it")
                return [line.strip() for line in lines], f"'{names_file.name}'"
    if fallback:
        log.warning("YOLO labels in '%s' have no classes.txt or data.yaml names: class ids are read "
                    "as indices into class_order %s", root, list(fallback))
        return list(fallback), "class_order"
    raise AnnotationError(f"YOLO labels in '{root}' need class names: add classes.txt (one name per "
                          "line, line 1 = class 0) or a data.yaml with names, or set "
                          "data.init_args.class_order in class-id order")


def _parse_yolo_line(draft: Draft, line: str, number: int, names: list[str], names_from: str) -> None:
    parts = line.split()
    row = f"line {number}"
    try:
        values = [float(v) for v in parts]
    except ValueError:
        draft.bad(f"{row} '{line.strip()}' is not numbers; YOLO rows are 'class cx cy w h'")
        return
    n = len(values)
    if n != 5 and (n < 7 or n % 2 == 0):
        draft.bad(f"{row} has {n} values; YOLO rows are 'class cx cy w h' (5 values) or "
                  "'class x1 y1 x2 y2 x3 y3 ...' (a polygon): fix or delete the line")
        return
    cls = values[0]
    if not (math.isfinite(cls) and cls.is_integer() and 0 <= cls < len(names)):
        draft.bad(f"{row}: class id {parts[0]} is not one of the {len(names)} classes of {names_from} "
                  f"(0..{len(names) - 1}); fix the id or the class names")
        return
    if n == 5:
        cx, cy, w, h = values[1:]
        draft.add((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), names[int(cls)], row)
    else:  # YOLO-seg polygon: the box is its extent
        xy = np.asarray(values[1:]).reshape(-1, 2)
        box = (float(xy[:, 0].min()), float(xy[:, 1].min()), float(xy[:, 0].max()), float(xy[:, 1].max()))
        draft.add(box, names[int(cls)], row, [values[1:]])


def parse_yolo(path: Path, class_order: Sequence[str] | None = None) -> Parsed:
    """A YOLO data set: images with one ``.txt`` per image (``class cx cy w h`` normalised to
    0..1 per line, or ``class x1 y1 ...`` polygons), in ``images/`` + ``labels/`` folders or
    side by side; ``path`` is the data set folder or its ``data.yaml``.

    Class names come from data.yaml ``names`` or ``classes.txt`` (see :func:`yolo_class_names`);
    data.yaml ``train``/``val``/``test`` entries fix the split. An empty label file is a
    negative; an image without a label file is a negative too, and reported in ``notes``; a
    label file without an image is reported and ignored (stray text files are common).
    """
    root, config, yaml_file = _yolo_layout(path)
    if not root.is_dir():
        raise AnnotationError(f"YOLO data set folder '{root}' does not exist; check data.init_args.annotations")
    names, names_from = yolo_class_names(root, config, yaml_file, class_order)
    images, lists = _yolo_images(root, config, yaml_file)
    if not images:
        raise AnnotationError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found for the YOLO data set "
                              f"'{root}'")
    out = Parsed([], names)
    given = {split for _, split in images if split is not None}
    if given and given != {"train", "val", "test"}:
        out.notes.append(f"'{yaml_file}' gives the splits {sorted(given)} and no "
                         f"{sorted({'train', 'val', 'test'} - given)}: those stay empty (val_fraction and "
                         "test_fraction do not apply to given splits)")
    used: set[Path] = set(lists)
    unlabelled: list[Path] = []
    for image, split in images:
        label_file = yolo_label_file(image)
        draft = Draft(image=image, source=str(label_file or image.with_suffix(".txt")), normalized=True,
                      shapes=[], split=split)
        out.drafts.append(draft)
        if label_file is None:
            unlabelled.append(image)
            continue
        used.add(label_file.resolve())
        try:
            text = read_text(label_file, "YOLO label file")
        except AnnotationError as err:
            draft.bad(str(err))
            continue
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                _parse_yolo_line(draft, line, number, names, names_from)
    if unlabelled:
        out.notes.append(f"{len(unlabelled)} image(s) have no YOLO label file and are used as negatives "
                         f"(e.g. '{unlabelled[0]}'); add an empty .txt to mark a negative explicitly")
    stray = sorted(p for p in root.rglob("*.txt") if p.resolve() not in used and p.name not in YOLO_NAME_FILES
                   and not is_hidden(p.relative_to(root)) and p.resolve() != (yaml_file or root).resolve())
    if stray:
        out.notes.append(f"ignored {len(stray)} .txt file(s) without an image of the same name "
                         f"(e.g. '{stray[0]}')")
    return out


# ---- Pascal VOC ------------------------------------------------------------------------------
def _voc_image(xml: Path, file_name: str, stored_path: str, images: Path | None) -> Path | None:
    """The image an XML describes: in ``images``, beside the XML, in VOC's ``../JPEGImages``,
    at the ``<path>`` the labelling tool stored; then by the XML's stem (LabelImg names the XML
    after the image) in the same folders."""
    folders = [images] if images is not None else [xml.parent, xml.parent.parent / "JPEGImages"]
    candidates = [f / file_name for f in folders if file_name]
    if stored_path:
        candidates.append(Path(stored_path))
    candidates += [f / (xml.stem + ext) for f in folders for ext in IMAGE_EXTENSIONS]
    return next((c for c in candidates if c.is_file()), None)


def _voc_object(draft: Draft, obj: ET.Element, k: int, keep_difficult: bool) -> bool:
    """Add one ``<object>``; returns False when it was dropped as difficult."""
    label = (obj.findtext("name") or "").strip()
    row = f"object {k}" + (f" ('{label}')" if label else "")
    if not label:
        draft.bad(f"{row} has no <name>; give the object a class name or delete it")
        return True
    difficult = (obj.findtext("difficult") or "0").strip()
    if difficult not in ("0", "1", ""):
        draft.bad(f"{row} has <difficult>{difficult}</difficult>; it must be 0 or 1")
        return True
    if difficult == "1" and not keep_difficult:
        return False
    box = obj.find("bndbox")
    try:
        xmin, ymin, xmax, ymax = (_number((box.findtext(t) or "").strip())  # type: ignore[union-attr]
                                  for t in ("xmin", "ymin", "xmax", "ymax"))
    except (AttributeError, ValueError):
        draft.bad(f"{row} has no complete <bndbox> (xmin, ymin, xmax, ymax numbers); fix or delete it")
        return True
    # VOC coordinates are 1-based pixel indices, both ends inclusive: pixels xmin..xmax cover
    # the continuous span [xmin - 1, xmax] (as Detectron2 reads them).
    draft.add((xmin - 1, ymin - 1, xmax, ymax), label, row)
    return True


def parse_voc(path: Path, images: Path | None = None, keep_difficult: bool = True) -> Parsed:
    """Pascal VOC XML files (as LabelImg and CVAT write them): one ``<annotation>`` per image
    with ``<filename>``, ``<size>`` and ``<object>`` entries (``<name>``, ``<difficult>``,
    ``<bndbox>``); ``path`` is one XML file or a folder searched for them.

    Coordinates are 1-based inclusive pixel indices: ``xmin=1, xmax=W`` is the whole width,
    read as ``[0, W]``. ``<difficult>1`` objects are kept by default (as training data they
    still show the object; dropping them would teach "background" there); ``keep_difficult=
    False`` drops them. ``<truncated>``, ``<pose>`` and ``<occluded>`` are not used.
    """
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*.xml") if not is_hidden(p.relative_to(path)))
    else:
        raise AnnotationError(f"VOC annotations '{path}' do not exist; give an XML file or a folder of them")
    if not files:
        raise AnnotationError(f"no .xml files in '{path}'; is it the right folder (VOC: Annotations/)?")
    out = Parsed([])
    difficult = 0
    for xml in files:
        try:
            text = read_text(xml, "VOC annotation file")
            if not text.strip():
                raise AnnotationError(f"VOC annotation file '{xml}' is empty; re-export it or delete it")
            root = ET.fromstring(text)
        except (AnnotationError, ET.ParseError) as err:
            out.orphans.append((str(xml), f"{err}" if isinstance(err, AnnotationError) else
                                f"'{xml}' is not valid XML ({err}); re-export it or delete it"))
            continue
        if root.tag != "annotation":
            out.orphans.append((str(xml), f"'{xml}' is not a Pascal VOC annotation (root <{root.tag}>, "
                                "expected <annotation>); move it out of the annotation folder"))
            continue
        file_name = (root.findtext("filename") or "").strip()
        image = _voc_image(xml, file_name, (root.findtext("path") or "").strip(), images)
        draft = Draft(image=image or xml.parent / (file_name or xml.stem), source=str(xml))
        if image is None:
            draft.bad(f"image '{file_name or xml.stem}' named by the XML does not exist (looked beside "
                      "it, in ../JPEGImages and at its <path>); set data.init_args.images to the "
                      "image folder")
        try:
            w, h = int(float(root.findtext("size/width") or 0)), int(float(root.findtext("size/height") or 0))
            draft.declared_size = (w, h) if w > 0 and h > 0 else None  # LabelImg writes 0 when unknown
        except ValueError:
            pass
        for k, obj in enumerate(root.iter("object"), start=1):
            difficult += not _voc_object(draft, obj, k, keep_difficult)
        out.drafts.append(draft)
    if difficult:
        out.notes.append(f"dropped {difficult} difficult object(s) (keep_difficult: false)")
    return out


# ---- masks -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class MaskPair:
    """An image, its mask (None: none found) and what the mask must hold.

    Attributes:
        image: the image file.
        mask: its mask file, or None.
        class_name: the class of every object of a binary mask (e.g. the image's folder);
            None: classes come from ``mask_values``.
        expect: ``objects`` (the image is labelled defective: a missing or empty mask is a bad
            annotation), ``none`` (labelled defect-free: a mask with objects is bad) or ``any``.
    """

    image: Path
    mask: Path | None
    class_name: str | None = None
    expect: Literal["objects", "none", "any"] = "any"


def parse_mask_pairs(pairs: Sequence[MaskPair], class_names: Sequence[str],
                     mask_values: Sequence[int] | None = None, threshold: float | None = None,
                     min_area: int = 1, hint: str = "") -> Parsed:
    """Objects from masks: each connected component of each class is one box.

    Args:
        pairs: the images and their masks.
        class_names: the classes; with ``mask_values`` entry ``i`` is the class of value ``i``.
        mask_values: class values of multi-class masks; None: binary masks (foreground at or
            above ``threshold``), each object of class ``pair.class_name`` or the only class.
        threshold: binary foreground threshold; None: half the mask's full scale (see
            :func:`core.instance_masks.binary_threshold`).
        min_area: components with fewer pixels are dropped (counted in ``notes``).
        hint: appended to the problem of a defect-labelled image without objects.
    """
    if mask_values is not None and len(mask_values) != len(class_names):
        raise AnnotationError(f"mask_values {list(mask_values)} need one class name each in class_order "
                              f"(got {list(class_names)})")
    values = tuple(int(v) for v in mask_values) if mask_values is not None else None
    out = Parsed([], list(class_names))
    unmasked, dropped = [], 0
    for pair in pairs:
        draft = Draft(image=pair.image, source=str(pair.mask or pair.image))
        out.drafts.append(draft)
        if pair.mask is None:
            if pair.expect == "objects":
                draft.bad(f"image '{pair.image}' has no mask beside it, but its folder marks it "
                          f"defective; add the mask{hint}")
            elif pair.expect == "any":
                unmasked.append(pair.image)
            continue
        try:
            mask = read_mask_image(pair.mask)
        except DataError as err:
            draft.bad(str(err))
            continue
        draft.declared_size = (mask.shape[1], mask.shape[0])
        draft.masks = ComponentMasks(str(pair.mask), values, threshold, min_area)
        if values is None and threshold is None and 1 < int(mask.max(initial=0)) < binary_threshold(mask):
            # A label map (0, 1, 2 ...) read as a binary mask would have no foreground at all.
            log.warning("mask '%s' holds values %s, all below the binary threshold %s: for label masks "
                        "set data.init_args.mask_values", pair.mask, np.unique(mask)[:8].tolist(),
                        binary_threshold(mask))
        found = mask_components(mask, list(values) if values is not None else None, threshold, min_area)
        dropped += found.dropped
        binary_class = pair.class_name if pair.class_name is not None else class_names[0]
        for n, (box, k) in enumerate(zip(found.boxes, found.classes, strict=True), start=1):
            x0, y0, x1, y1 = (float(v) for v in box)
            draft.add((x0, y0, x1, y1), class_names[int(k)] if values is not None else binary_class,
                      f"component {n}")
        if pair.expect == "objects" and not draft.boxes:
            draft.bad(f"mask '{pair.mask}' has no object (no component of {min_area}+ px at the "
                      "foreground threshold), but its folder marks the image defective; an unmarked "
                      f"defect would train as defect-free: fix the mask{hint}")
        elif pair.expect == "none" and draft.boxes:
            draft.bad(f"mask '{pair.mask}' has {len(draft.boxes)} object(s), but the image is in the "
                      "defect-free folder; move the image to its defect folder or clear the mask")
    if unmasked:
        out.notes.append(f"{len(unmasked)} image(s) have no mask and are used as negatives "
                         f"(e.g. '{unmasked[0]}')")
    if dropped:
        out.notes.append(f"dropped {dropped} mask component(s) smaller than min_mask_area={min_area} px")
    return out


def pair_masks(masks: Path, images: Path | None = None,
               patterns: Sequence[str] | None = None) -> list[MaskPair]:
    """Images and their masks for the ``masks`` format.

    With ``images`` a different folder, an image's mask is the file in ``masks`` at the same
    relative folder with the same stem, or a mask-pattern name of it (``x_mask.png``). Without
    it (or the same folder), masks are stored beside the images and found by ``patterns``
    (default :data:`core.data.DEFAULT_MASK_PATTERNS`: ``x.png`` beside ``x.jpg``,
    ``x_mask.png``, ``masks/x.png`` ...); files matching a pattern are not images.
    """
    from core.data import DEFAULT_MASK_PATTERNS, JPEG_EXTENSIONS, find_mask, matches_patterns

    patterns = DEFAULT_MASK_PATTERNS if patterns is None else patterns
    if not masks.is_dir():
        raise AnnotationError(f"mask folder '{masks}' does not exist; check data.init_args.annotations")
    if images is None or images.resolve() == masks.resolve():
        files = _image_files(masks)
        stems: dict[Path, set[str]] = {}
        for f in files:
            if f.suffix.lower() in JPEG_EXTENSIONS:
                stems.setdefault(f.parent, set()).add(f.stem.lower())
        found = [f for f in files if not matches_patterns(f.relative_to(masks), patterns, stems.get(f.parent, ()))]
        listings: dict[Path, tuple[list[str], list[Path]]] = {}
        return [MaskPair(f, find_mask(f, patterns, listings)) for f in found]
    if not images.is_dir():
        raise AnnotationError(f"image folder '{images}' does not exist; check data.init_args.images")
    tails = [p[1:].lower() for p in patterns if p.startswith("*") and not p.endswith("/")]
    index: dict[Path, dict[str, list[Path]]] = {}
    pairs = []
    for image in _image_files(images):
        folder = masks / image.relative_to(images).parent
        if folder not in index:
            index[folder] = _masks_by_stem(folder, tails)
        pairs.append(MaskPair(image, next(iter(index[folder].get(image.stem.lower(), [])), None)))
    return pairs


def _masks_by_stem(folder: Path, tails: Sequence[str]) -> dict[str, list[Path]]:
    """Image stem -> the mask files of a folder named after it: ``x.png`` first, then pattern
    names (``x_mask.png`` for the tail ``_mask.*``)."""
    found: dict[str, list[Path]] = {}
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                   and p.suffix.lower() in IMAGE_EXTENSIONS) if folder.is_dir() else []
    for f in files:
        found.setdefault(f.stem.lower(), []).append(f)
    for f in files:
        name = f.name.lower()
        for tail in tails:
            for i in range(1, len(name)):
                if fnmatch.fnmatchcase(name[i:], tail):
                    found.setdefault(name[:i], []).append(f)
    return found
