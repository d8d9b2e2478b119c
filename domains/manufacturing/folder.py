"""A user's own inspection images: one folder per class, or a CSV manifest ``path,label``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from core.data import (
    DEFAULT_MASK_PATTERNS,
    IMAGE_EXTENSIONS,
    Channels,
    ConvNeXtDataModule,
    DataError,
    ImageFileSource,
    encode_labels,
    read_manifest,
    scan_class_folders,
    warn_rare_classes,
)
from core.filescan import (
    OnBadFile,
    describe_images,
    log_skipped,
    majority_channels,
    record_bad,
    scan_images,
)

log = logging.getLogger(__name__)


def scan_defect_folders(root: str | Path, extensions: list[str] | None = None,
                        mask_patterns: list[str] | None = None) -> tuple[list[Path], list[str], list[str]]:
    """Images of ``root/<class>/`` folders: (files, class folder per file, sorted class folders).

    Args:
        root: the folder of class folders.
        extensions: image file endings (with or without the dot, any case); None: all common.
        mask_patterns: files and folders that are masks, not images (see
            :data:`core.data.DEFAULT_MASK_PATTERNS`, the default); ``[]`` keeps everything.
    """
    suffixes = ([e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions]
                if extensions else IMAGE_EXTENSIONS)
    patterns = DEFAULT_MASK_PATTERNS if mask_patterns is None else mask_patterns
    return scan_class_folders(root, suffixes, exclude=patterns)


class DefectFolderDataModule(ConvNeXtDataModule):
    """Defect images from ``root/<class>/*.png`` folders or a CSV manifest.

    Every file of every split is decoded once when the sample list is built, so a corrupt
    test image stops ``fit`` instead of ``test`` (or is skipped and reported). Images are
    converted to ``channels`` (alpha dropped, palette expanded, gray <-> RGB; see
    :func:`core.preprocess.image_to_array`), summarised in one log line.

    Args:
        root: folder with one sub-folder per class (``good/``, ``scratch/``, ...). Hidden files
            and non-images (Thumbs.db, .DS_Store, README.txt) are ignored.
        manifest: CSV with columns ``path,label`` (optional ``split`` = train/val/test); relative
            paths are resolved against the CSV's folder. Use either ``root`` or ``manifest``.
        channels: ``gray`` or ``rgb``; default: the layout most images are stored in.
        good_class: the defect-free class; every other class counts as a defect for the
            operating point.
        class_order: the valid labels (class folders) in class order; a label outside it is an
            error naming the row. Default: the sorted labels found.
        extensions: image file endings to use in class folders; default all common image types.
        mask_patterns: class-folder files (``*_mask.*``), folders (``masks/``) and files named
            like a JPEG beside them (``{stem}.*``: ``x.png`` beside ``x.jpg``) that are masks
            or ground truth, not images, and are left out (with a warning); ``[]`` keeps
            everything. Default :data:`core.data.DEFAULT_MASK_PATTERNS`.
        on_bad_file: ``error`` stops naming every unreadable file or blank/missing manifest
            entry; ``skip`` leaves them out of every split and reports them (log and
            ``skipped_files.csv`` in the run directory).
        **kwargs: options of :class:`~core.data.ConvNeXtDataModule`.
    """

    def __init__(
        self,
        root: str | None = None,
        manifest: str | None = None,
        channels: Channels | None = None,
        good_class: str = "good",
        class_order: list[str] | None = None,
        extensions: list[str] | None = None,
        mask_patterns: list[str] | None = None,
        on_bad_file: OnBadFile = "error",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if (root is None) == (manifest is None):
            raise DataError("give exactly one of data.init_args.root (class folders) or "
                            "data.init_args.manifest (CSV with path,label)")

    # -- the sample list --
    def _from_folders(self) -> tuple[list[Path], list[str], list[str], None]:
        h = self.hparams
        files, names, _ = scan_defect_folders(h.root, h.extensions, h.mask_patterns)
        return files, names, [f"class folder '{n}'" for n in names], None

    def _from_manifest(self) -> tuple[list[Path], list[str], list[str], list[str] | None]:
        """Rows with a path and a label; blank or missing entries follow ``on_bad_file``."""
        h = self.hparams
        manifest = Path(h.manifest).expanduser()
        rows = read_manifest(manifest, ["path", "label"])
        has_split = "split" in rows[0]
        files, names, where, split = [], [], [], []
        for line, row in enumerate(rows, start=2):
            raw_path, label = (row.get("path") or "").strip(), (row.get("label") or "").strip()
            at = f"manifest '{manifest.name}' row {line}"
            path = Path(raw_path).expanduser()
            path = path if path.is_absolute() else manifest.parent / path
            if not raw_path:
                record_bad(h.on_bad_file, self.skipped, f"{at} (no path)",
                           f"{at} has a blank path; fill it in or delete the row")
                continue
            if not path.is_file():
                record_bad(h.on_bad_file, self.skipped, path,
                           f"{at} names '{raw_path}', which does not exist (looked at {path}); "
                           "fix the path or delete the row")
                continue
            if not label:
                record_bad(h.on_bad_file, self.skipped, path,
                           f"{at} ('{raw_path}') has a blank label; fill it in or delete the row")
                continue
            files.append(path)
            names.append(label)
            where.append(at)
            split.append((row.get("split") or "").strip())
        return files, names, where, split if has_split else None

    def build_source(self) -> ImageFileSource:
        h = self.hparams
        files, names, where, split = self._from_folders() if h.root is not None else self._from_manifest()
        # Label errors are configuration errors: refuse them before the (slower) image scan.
        encode_labels(names, h.class_order, where)
        infos = scan_images(files, h.on_bad_file, self.skipped)
        keep = [i for i, info in enumerate(infos) if info is not None]
        log_skipped(self.skipped, "file")
        if not keep:
            raise DataError("no readable images left; see the skipped files above")
        labels, classes = encode_labels([names[i] for i in keep], h.class_order, [where[i] for i in keep])
        warn_rare_classes(labels, classes)
        kept = [infos[i] for i in keep]
        channels = h.channels or majority_channels(kept)
        describe_images(kept, channels, h.image_size)
        return ImageFileSource([files[i] for i in keep], labels, channels, class_names=classes,
                               split=[split[i] for i in keep] if split is not None else None)

    @property
    def positive_classes(self) -> list[str] | None:
        if self.hparams.good_class not in self.class_names:
            # Guessing would put the operating point on the wrong class (the task's default
            # positive is the second class name, e.g. 'ok' of ['ng', 'ok']).
            raise DataError(f"good_class '{self.hparams.good_class}' is not among the classes "
                            f"{self.class_names}; set data.init_args.good_class to the defect-free class")
        return [c for c in self.class_names if c != self.hparams.good_class]

    def predict_source(self, paths: list[Path]) -> ImageFileSource:
        """Files to predict on, scanned like the training data (bad ones follow ``on_bad_file``)."""
        channels = self.source.channels
        before = len(self.skipped)
        infos = scan_images(paths, self.hparams.on_bad_file, self.skipped)
        log_skipped(self.skipped[before:], "file")
        kept = [i for i in infos if i is not None]
        if not kept:
            raise DataError("none of the predict_paths is a readable image; see the reasons above")
        describe_images(kept, channels, self.hparams.image_size)
        return ImageFileSource([i.path for i in kept], np.zeros(len(kept), dtype=int), channels)
