"""A user's own inspection images: one folder per class, or a CSV manifest ``path,label``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from core.data import (
    IMAGE_EXTENSIONS,
    Channels,
    ConvNeXtDataModule,
    DataError,
    ImageFileSource,
    detect_channels,
    read_manifest,
    resolve_paths,
    scan_class_folders,
)

log = logging.getLogger(__name__)


class DefectFolderDataModule(ConvNeXtDataModule):
    """Defect images from ``root/<class>/*.png`` folders or a CSV manifest.

    Args:
        root: folder with one sub-folder per class (``good/``, ``scratch/``, ...).
        manifest: CSV with columns ``path,label`` (optional ``split`` = train/val/test); relative
            paths are resolved against the CSV's folder. Use either ``root`` or ``manifest``.
        channels: ``gray`` or ``rgb``; default detected from the first image.
        good_class: the defect-free class; every other class counts as a defect for the
            operating point.
        extensions: image file endings to use in class folders (e.g. ``[.jpg]`` when masks
            stored as .png sit beside the images); default all common image types.
        **kwargs: options of :class:`~core.data.ConvNeXtDataModule`.
    """

    def __init__(
        self,
        root: str | None = None,
        manifest: str | None = None,
        channels: Channels | None = None,
        good_class: str = "good",
        extensions: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if (root is None) == (manifest is None):
            raise DataError("give exactly one of data.init_args.root (class folders) or "
                            "data.init_args.manifest (CSV with path,label)")
        self._given_split: list[str] | None = None

    def build_source(self) -> ImageFileSource:
        h = self.hparams
        if h.root is not None:
            files, names, classes = scan_class_folders(
                h.root, [e.lower() if e.startswith(".") else f".{e.lower()}" for e in h.extensions]
                if h.extensions else IMAGE_EXTENSIONS)
        else:
            rows = read_manifest(h.manifest, ["path", "label"])
            files = resolve_paths(rows, "path", Path(h.manifest).expanduser().parent)
            names = [r["label"].strip() for r in rows]
            classes = sorted(set(names))
            if len(classes) < 2:
                raise DataError(f"manifest '{h.manifest}' has labels {classes}; at least two classes needed")
            if "split" in rows[0]:
                self._given_split = [r["split"].strip() for r in rows]
        self._class_names = classes
        channels = h.channels or detect_channels(files[0])
        labels = np.array([classes.index(n) for n in names], dtype=np.int64)
        return ImageFileSource(files, labels, channels)

    def given_split(self) -> list[str] | None:
        _ = self.source
        return self._given_split

    @property
    def positive_classes(self) -> list[str] | None:
        _ = self.source
        if self.hparams.good_class not in self.class_names:
            log.warning("good_class '%s' is not among the classes %s; the operating point uses "
                        "the task default", self.hparams.good_class, self.class_names)
            return None
        return [c for c in self.class_names if c != self.hparams.good_class]

    def predict_source(self, paths: list[Path]) -> ImageFileSource:
        return ImageFileSource(paths, np.zeros(len(paths), dtype=int), self.source.channels)
