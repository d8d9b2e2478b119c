"""Finding samples on disk: class folders, masks beside images, manifests and label encoding.

The scanning half of the base datamodule (:mod:`core.data` re-exports every name here), kept
apart so the rules for what counts as an image, a mask or a label live in one small module.
"""

from __future__ import annotations

import bisect
import fnmatch
import logging
from collections.abc import Collection, Sequence
from pathlib import Path

import numpy as np

from core.errors import DataError
from core.preprocess import IMAGE_EXTENSIONS, is_hidden

log = logging.getLogger(__name__)


# Files that segmentation masks / ground truth are usually stored as, beside or below images
# (``img_001_mask.png``, ``000_gt.png``, ``masks/``, MVTec's ``ground_truth/``). A pattern
# ending in ``/`` matches a folder name; the others match file names (case-insensitive globs).
# A leading ``{stem}`` stands for the name of a JPEG in the same folder: masks are never saved
# lossy, so ``x.png`` beside ``x.jpg`` is x's mask (the magnetic-tile data set's layout).
DEFAULT_MASK_PATTERNS: tuple[str, ...] = (
    "*_mask.*", "*_masks.*", "*_label.*", "*_labels.*", "*_gt.*", "*_groundtruth.*", "{stem}.*",
    "mask/", "masks/", "label/", "labels/", "gt/", "ground_truth/", "groundtruth/",
)
JPEG_EXTENSIONS = (".jpg", ".jpeg")
_STEM = "{stem}"


def matches_patterns(relative: Path, patterns: Sequence[str], jpeg_stems: Collection[str] = ()) -> bool:
    """Whether a path below the data root matches a mask pattern (see :data:`DEFAULT_MASK_PATTERNS`).

    Args:
        relative: the path relative to the data root.
        patterns: file globs (``*_mask.*``), folder globs (``masks/``) and ``{stem}`` globs.
        jpeg_stems: lower-case name stems of the JPEG files in the same folder, for ``{stem}``.
    """
    folders = [part.lower() for part in relative.parts[:-1]]
    name = relative.name.lower()
    for pattern in patterns:
        pattern = pattern.lower()
        if pattern.endswith("/"):
            if any(fnmatch.fnmatchcase(f, pattern.rstrip("/")) for f in folders):
                return True
        elif pattern.startswith(_STEM):
            if relative.suffix.lower() in JPEG_EXTENSIONS:
                continue  # the JPEG is the image, never its own mask
            rest = pattern[len(_STEM):]
            if any(name[:i] in jpeg_stems and fnmatch.fnmatchcase(name[i:], rest) for i in range(1, len(name))):
                return True
        elif fnmatch.fnmatchcase(name, pattern):
            return True
    return False


def find_mask(image: Path, patterns: Sequence[str] = DEFAULT_MASK_PATTERNS,
              listings: dict[Path, tuple[list[str], list[Path]]] | None = None) -> Path | None:
    """The mask stored beside an image under one of ``patterns`` (the inverse of
    :func:`matches_patterns`); the first pattern with a match wins, then the first name sorted.

    For ``x.jpg``: ``*_mask.*`` finds ``x_mask.png``; ``{stem}.*`` finds ``x.png`` (any
    non-JPEG image, and only beside a JPEG); a folder pattern ``masks/`` finds ``masks/x.*``
    or a file-pattern name (``masks/x_mask.png``) in a sub-folder of the image's folder.

    Args:
        image: the image file.
        patterns: mask patterns, as :data:`DEFAULT_MASK_PATTERNS`.
        listings: a cache of folder listings shared across calls, so a folder of thousands of
            images is listed once (pass the same dict for every image of a scan).
    """
    listings = {} if listings is None else listings
    stem, is_jpeg = image.stem.lower(), image.suffix.lower() in JPEG_EXTENSIONS

    def listing(folder: Path) -> tuple[list[str], list[Path]]:
        """(sorted lower-case names, entries) of a folder, hidden entries left out."""
        if folder not in listings:
            entries = sorted((p for p in folder.iterdir() if not p.name.startswith(".")),
                             key=lambda p: p.name.lower()) if folder.is_dir() else []
            listings[folder] = ([p.name.lower() for p in entries], entries)
        return listings[folder]

    def first(folder: Path, tails: Sequence[tuple[str, bool]]) -> Path | None:
        """The first entry named stem + a tail glob; the tails are the same for every image,
        so their compiled patterns are cached (a glob with the stem in it would compile anew
        for every image)."""
        names, entries = listing(folder)
        start, stop = bisect.bisect_left(names, stem), bisect.bisect_right(names, stem + "\uffff")
        for tail, jpeg_allowed in tails:
            for name, entry in zip(names[start:stop], entries[start:stop], strict=True):
                suffix = entry.suffix.lower()
                if (entry != image and suffix in IMAGE_EXTENSIONS and (jpeg_allowed or suffix not in JPEG_EXTENSIONS)
                        and fnmatch.fnmatchcase(name[len(stem):], tail)):
                    return entry
        return None

    def tail_of(pattern: str) -> tuple[str, bool] | None:
        """(glob of the mask name after the image's stem, whether a JPEG may be the mask);
        masks are never saved lossy, so the ``{stem}`` rule only pairs a lossless file with a JPEG."""
        if pattern.startswith(_STEM):
            return (pattern[len(_STEM):], False) if is_jpeg else None
        if pattern.startswith("*"):
            return pattern[1:], True
        return None  # a fixed name ("mask.png") does not tie a file to one image

    lowered = [p.lower() for p in patterns]
    file_tails = [t for p in lowered if not p.endswith("/") and (t := tail_of(p))]
    for pattern in lowered:
        if pattern.endswith("/"):
            names, entries = listing(image.parent)
            subs = [e for n, e in zip(names, entries, strict=True)
                    if fnmatch.fnmatchcase(n, pattern.rstrip("/")) and e.is_dir()]
            hit = next((h for d in subs if (h := first(d, [(".*", True), *file_tails]))), None)
        else:
            tail = tail_of(pattern)
            hit = first(image.parent, [tail]) if tail else None
        if hit is not None:
            return hit
    return None


def scan_class_folders(
    root: str | Path, extensions: Sequence[str] = IMAGE_EXTENSIONS, exclude: Sequence[str] = ()
) -> tuple[list[Path], list[str], list[str]]:
    """``root/<class>/<file>`` layout -> (files, class name per file, sorted class names).

    Hidden files and folders and files without one of ``extensions`` (Thumbs.db, desktop.ini,
    README.txt ...) are ignored and counted in one info line. Files or folders matching an
    ``exclude`` pattern (see :data:`DEFAULT_MASK_PATTERNS`) are left out with a warning; a
    top-level folder matching one is not a class.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"data folder '{root}' does not exist; set data.init_args.root to a folder "
                        "with one sub-folder per class")
    excluded: list[Path] = []
    classes = []
    for d in sorted(root.iterdir()):
        if not d.is_dir() or is_hidden(d.relative_to(root)):
            continue
        if matches_patterns(d.relative_to(root) / "x", exclude):  # the folder itself is a mask folder
            excluded.append(d.relative_to(root))
        else:
            classes.append(d.name)
    if len(classes) < 2:
        raise DataError(f"'{root}' has {len(classes)} class folder(s) {classes}; a classifier needs "
                        "at least two sub-folders, one per class (e.g. good/ and defect/)")
    files, labels, ignored = [], [], []
    for name in classes:
        found = []
        candidates = sorted(p for p in (root / name).rglob("*") if p.is_file())
        jpeg_stems: dict[Path, set[str]] = {}
        for p in candidates:
            if p.suffix.lower() in JPEG_EXTENSIONS:
                jpeg_stems.setdefault(p.parent, set()).add(p.stem.lower())
        for p in candidates:
            relative = p.relative_to(root)
            if is_hidden(relative) or p.suffix.lower() not in extensions:
                ignored.append(relative)
            elif matches_patterns(relative, exclude, jpeg_stems.get(p.parent, ())):
                excluded.append(relative)
            else:
                found.append(p)
        if not found:
            raise DataError(f"class folder '{root / name}' holds no images ({', '.join(extensions)}); "
                            "add images or remove the folder")
        files += found
        labels += [name] * len(found)
    if ignored:
        log.info("ignored %d file(s) in '%s' that are hidden or not %s (e.g. %s)", len(ignored), root,
                 "/".join(extensions), ignored[0])
    if excluded:
        log.warning("left out %d file(s)/folder(s) in '%s' that look like masks or ground truth "
                    "(e.g. %s; patterns %s); set data.init_args.mask_patterns: [] to use them as images",
                    len(excluded), root, excluded[0], list(exclude))
    return files, labels, classes


def encode_labels(values: Sequence[str], class_order: Sequence[str] | None,
                  where: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Class indices for label values, and the class names.

    Args:
        values: one label per sample (already stripped).
        class_order: the valid labels in class order; None takes the sorted set of ``values``.
        where: per sample, where its label came from (``manifest 'x.csv' row 7``), for errors.

    Raises:
        DataError: a label outside ``class_order`` (naming where, the value and the valid
            labels), or fewer than two classes.
    """
    classes = [str(c) for c in class_order] if class_order else sorted(set(values))
    if class_order and len(set(classes)) != len(classes):
        raise DataError(f"class_order {classes} names a class twice; list each class once")
    known = set(classes)
    unknown = list(dict.fromkeys((w, v) for w, v in zip(where, values, strict=True) if v not in known))
    if unknown:
        shown = "; ".join(f"{w}: '{v}'" for w, v in unknown[:5])
        more = f" (and {len(unknown) - 5} more)" if len(unknown) > 5 else ""
        raise DataError(f"label(s) not in class_order: {shown}{more}; valid labels are {classes}: "
                        "fix the label or add the class to class_order")
    if len(classes) < 2:
        raise DataError(f"only one class ({classes}) in the labels; a classifier needs two or more")
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[v] for v in values], dtype=np.int64), classes


# Classes with fewer samples than this cannot be split into train/val/test and are most often
# a typo'd label or a misplaced file.
FEW_SAMPLES = 5


def warn_rare_classes(labels: np.ndarray, classes: Sequence[str]) -> list[str]:
    """Warn about classes with fewer than :data:`FEW_SAMPLES` samples; returns their names."""
    import difflib

    counts = np.bincount(labels, minlength=len(classes))
    rare = [(c, int(n)) for c, n in zip(classes, counts, strict=True) if n < FEW_SAMPLES]
    if rare:
        hints = []
        for name, n in rare:
            others = [c for c in classes if c != name]
            close = difflib.get_close_matches(name.lower(), [c.lower() for c in others], n=1, cutoff=0.75)
            hint = f", a typo of '{others[[c.lower() for c in others].index(close[0])]}'?" if close else ""
            hints.append(f"'{name}': {n}{hint}")
        log.warning("class(es) with fewer than %d samples: %s; add samples, fix the labels, or set "
                    "class_order to refuse unknown labels", FEW_SAMPLES, "; ".join(hints))
    return [name for name, _ in rare]


def read_manifest(path: str | Path, required: Sequence[str]) -> list[dict[str, str]]:
    """Rows of a CSV manifest; relative paths are resolved against the manifest's folder."""
    import csv

    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"manifest '{path}' does not exist; set data.init_args.manifest to a CSV file")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    columns = list(rows[0].keys()) if rows else []
    missing = [c for c in required if c not in columns]
    if not rows or missing:
        raise DataError(f"manifest '{path}' needs columns {list(required)}; found {columns or 'no rows'}")
    return rows


def resolve_paths(rows: list[dict[str, str]], column: str, base: Path) -> list[Path]:
    """Absolute paths from a manifest column; a missing file is an error naming its row."""
    paths = []
    for line, row in enumerate(rows, start=2):
        p = Path(row[column]).expanduser()
        p = p if p.is_absolute() else base / p
        if not p.exists():
            raise DataError(f"manifest row {line} names '{row[column]}', which does not exist "
                            f"(looked at {p}); fix the path or delete the row")
        paths.append(p)
    return paths
