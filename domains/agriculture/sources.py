"""Sample sources over GeoTIFFs: scene tiles (segmentation) and patch folders (tile classification)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.windows import Window

from core.data import SampleSource
from core.errors import DataError
from core.filescan import OnBadFile, check_files, log_skipped
from core.preprocess import normalize
from domains.agriculture.bands import BandSpec, check_same_bands
from domains.agriculture.drift import InputDrift
from domains.agriculture.raster import LabelRaster, RasterStack

log = logging.getLogger(__name__)


def clip_mask(window: Window, clip: Window) -> np.ndarray:
    """HW bool: which pixels of ``window`` lie inside ``clip``."""
    h, w = int(window.height), int(window.width)
    inside = np.zeros((h, w), dtype=bool)
    r0, c0 = int(clip.row_off - window.row_off), int(clip.col_off - window.col_off)
    inside[max(0, r0):max(0, r0 + int(clip.height)), max(0, c0):max(0, c0 + int(clip.width))] = True
    return inside


class SceneTileSource(SampleSource):
    """Tiles of one scene on a grid inside spatial blocks.

    Every pixel belongs to exactly one tile, and a tile sees only its own block: where a tile
    reaches past its block (block size not a multiple of the tile, or the scene edge) those
    pixels are nodata and unlabelled, so no image or label crosses a split. ``labels`` holds
    each tile's dominant class (-1 without labelled pixels) for stratification, ``blocks``
    the block of each tile (the unit of the train/val/test split).
    """

    def __init__(self, stack: RasterStack, spec: BandSpec, label: LabelRaster | None, tile: int,
                 block: int, num_classes: int, ignore_index: int, **facts: Any) -> None:
        self.stack, self.spec, self.label = stack, spec, label
        self.tile, self.block, self.ignore_index = tile, block, ignore_index
        self.windows: list[Window] = []
        self.blocks: list[int] = []
        self.block_windows: list[Window] = []
        corners = [(c, r) for r in range(0, stack.height, block) for c in range(0, stack.width, block)]
        for b, (c, r) in enumerate(corners):
            bw = Window(c, r, min(block, stack.width - c), min(block, stack.height - r))
            self.block_windows.append(bw)
            for tr in range(r, r + int(bw.height), tile):
                for tc in range(c, c + int(bw.width), tile):
                    self.windows.append(Window(tc, tr, tile, tile))
                    self.blocks.append(b)
        ids = [f"r{int(w.row_off)}_c{int(w.col_off)}" for w in self.windows]
        self.class_pixels = np.zeros((len(self.windows), num_classes), dtype=np.int64)
        # Labelled pixels where a band is nodata are never trained on or scored (read_window), so
        # they must not count either: class weights, oversampling and strata use these counts.
        self.labelled_on_nodata = 0
        if label is not None:
            for i, w in enumerate(self.windows):
                mask = label.read(w)
                labelled = (mask != ignore_index) & clip_mask(w, self.block_windows[self.blocks[i]])
                if labelled.any():  # the bands are read only where there is something to count
                    valid = stack.read(w)[1]
                    self.labelled_on_nodata += int((labelled & ~valid).sum())
                    labelled &= valid
                self.class_pixels[i] = np.bincount(mask[labelled], minlength=num_classes)[:num_classes]
            if self.labelled_on_nodata:
                log.warning("%d labelled pixel(s) lie where a band is nodata: they are not trained on, "
                            "scored or counted", self.labelled_on_nodata)
        has = self.class_pixels.sum(axis=1) > 0
        super().__init__(ids, np.where(has, self.class_pixels.argmax(axis=1), -1), groups=self.blocks,
                         channel_names=spec.channel_names(stack), **facts)

    def read_window(self, window: Window, sample_id: str, clip: Window | None = None) -> dict[str, Any]:
        """Image and mask of ``window``; pixels outside ``clip`` (its block) count as nodata."""
        image, valid = self.spec.read(self.stack, window)
        if clip is not None:
            valid &= clip_mask(window, clip)
            image[~valid] = np.nan
        out: dict[str, Any] = {"image": image, "id": sample_id}
        if self.label is not None:
            mask = self.label.read(window)
            mask[~valid] = self.ignore_index  # never train or score on nodata
            out["mask"] = mask
        return out

    def read(self, index: int) -> dict[str, Any]:
        return self.read_window(self.windows[index], self.ids[index],
                                self.block_windows[self.blocks[index]])

    def read_image(self, index: int) -> np.ndarray:
        return self.read(index)["image"]


class PatchFolderSource(SampleSource):
    """Small GeoTIFF patches with a class each (EuroSAT layout); every patch is read whole.

    Every patch must have the bands of the first one (or of ``like``, the training source's
    stack, when predicting); another band layout is an error naming the file. With
    ``reference`` (training mean and std, when predicting) a patch far outside the training
    statistics is logged as a warning.
    """

    def __init__(self, paths: Sequence[Path], labels: np.ndarray, spec: BandSpec,
                 like: RasterStack | None = None,
                 reference: tuple[Sequence[float], Sequence[float]] | None = None, **facts: Any) -> None:
        self.paths = [str(p) for p in paths]
        self.spec = spec
        self.stack = spec.open(self.paths[0])  # validates bands and indices on the first patch
        self._trained_on = "the training patches have" if like is not None else f"'{self.paths[0]}' has"
        self.like = like if like is not None else self.stack
        check_same_bands(self.stack, self.like.names, self.like.file_band_count, self.paths[0],
                         self._trained_on)
        self.reference = reference
        super().__init__(self.paths, labels, channel_names=spec.channel_names(self.stack), **facts)

    def read_image(self, index: int) -> np.ndarray:
        stack = self.spec.open(self.paths[index])
        try:
            check_same_bands(stack, self.like.names, self.like.file_band_count, self.paths[index],
                             self._trained_on)
            image, valid = self.spec.read(stack, Window(0, 0, stack.width, stack.height))
            if self.reference is not None:
                drift = InputDrift(self.spec.channel_names(stack))
                drift.add(normalize(image, *self.reference).transpose(2, 0, 1), valid)
                drift.report(self.paths[index])
            return image
        finally:
            stack.close()


def scan_patches(paths: Sequence[Path], spec: BandSpec, on_bad_file: OnBadFile,
                 skipped: list[tuple[str, str]], like: RasterStack | None = None) -> list[bool]:
    """Whether each patch can be used: each file is opened and read once, before any training.

    A patch is bad when it cannot be opened or read, has other bands than ``like`` (training's
    stack when predicting; else the first readable patch), or has no valid pixel (every pixel
    nodata, masked or not finite: e.g. an edge tile cut from a scene). Bad patches follow
    ``on_bad_file`` (:func:`core.filescan.check_files`): one error naming them, or left out and
    reported.
    """
    reference = like

    def check(path: Path) -> bool:
        nonlocal reference
        stack = spec.open(str(path))
        if reference is None:
            reference = stack
        try:
            check_same_bands(stack, reference.names, reference.file_band_count, str(path),
                             "the training patches have" if like is not None else f"'{reference.paths[0]}' has")
            try:
                _, valid = spec.read(stack, Window(0, 0, stack.width, stack.height))
            except rasterio.errors.RasterioError as err:
                raise DataError(f"cannot read raster '{path}' ({err})") from err
            if not valid.any():
                raise DataError(f"'{path}' has no valid pixel (every pixel is nodata, masked or not finite)")
            return True
        finally:
            if stack is not reference:
                stack.close()

    before = len(skipped)
    try:
        usable = [ok is not None for ok in check_files(paths, check, on_bad_file, skipped, "GeoTIFF file")]
    finally:
        if like is None and reference is not None:
            reference.close()
    log_skipped(skipped[before:], "GeoTIFF file")
    if not any(usable):
        raise DataError(f"none of the {len(paths)} GeoTIFF patches can be used (see the skipped files above)")
    return usable


def dominant_weights(class_pixels: np.ndarray, mode: str) -> np.ndarray:
    """Sampling weight per tile: ``none`` uniform, ``labelled`` only tiles with labels,
    ``rare`` tiles with labels weighted by the inverse frequency of their rarest class."""
    has = class_pixels.sum(axis=1) > 0
    if mode == "none" or not has.any():
        return np.ones(len(class_pixels))
    if mode == "labelled":
        return has.astype(float)
    freq = class_pixels.sum(axis=0).astype(float)
    inv = np.where(freq > 0, 1.0 / np.maximum(freq, 1), 0.0)
    return np.where(class_pixels > 0, inv[None, :], 0.0).max(axis=1) / inv.max()


def profile_of(stack: RasterStack) -> Mapping[str, Any]:
    return {"width": stack.width, "height": stack.height, "crs": stack.crs, "transform": stack.transform}
