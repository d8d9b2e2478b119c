"""Whole-scene prediction: tile windows, blending of overlapping tiles, strip-wise GeoTIFF output.

Only numpy and rasterio: the same code serves Lightning ``predict`` and torch-free runtimes.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.windows import Window

from domains.agriculture.drift import InputDrift

log = logging.getLogger(__name__)

NODATA_CLASS = 255


def _starts(size: int, tile: int, stride: int) -> list[int]:
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile + 1, stride))
    if starts[-1] != size - tile:
        starts.append(size - tile)  # the last tile is shifted back so the edge is covered
    return starts


def grid_windows(width: int, height: int, tile: int, overlap: int = 0,
                 col_off: int = 0, row_off: int = 0) -> list[Window]:
    """Row-major ``tile`` x ``tile`` windows covering a ``width`` x ``height`` area.

    Neighbouring windows overlap by at least ``overlap`` pixels; areas smaller than a tile get
    one window that extends past their edge (read boundless, filled with nodata).
    """
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile_size={tile}), got {overlap}")
    stride = tile - overlap
    return [Window(col_off + c, row_off + r, tile, tile)
            for r in _starts(height, tile, stride) for c in _starts(width, tile, stride)]


def blend_weights(tile: int, overlap: int) -> np.ndarray:
    """Per-pixel weights that fall off linearly within ``overlap`` of a tile's border.

    Tile borders see the least context, so in overlaps the tile whose centre is closer wins
    smoothly instead of leaving seams.
    """
    if overlap <= 0:
        return np.ones((tile, tile), dtype=np.float32)
    i = np.arange(tile, dtype=np.float32) + 0.5
    ramp = np.clip(np.minimum(i, tile - i) / overlap, 1e-3, 1.0)
    return np.outer(ramp, ramp).astype(np.float32)


def partial_path(path: Path) -> Path:
    """A hidden temporary name beside ``path`` (same folder, so the final rename is atomic)."""
    return path.with_name(f".{path.stem}.partial-{uuid.uuid4().hex[:8]}{path.suffix}")


class SceneWriter:
    """Accumulate blended tile probabilities and write finished rows to GeoTIFF.

    Windows must arrive in row-major order (as from :func:`grid_windows`); memory holds one
    strip of ``tile`` rows across the scene, never the whole scene.

    Outputs are written under hidden temporary names in the output folder and renamed only by
    :meth:`close`; :meth:`abort` (or leaving a ``with`` block with an exception) removes them,
    so a failed prediction leaves no map that looks finished.

    With ``channel_names``, the normalised inputs given to :meth:`add` are compared with the
    training statistics; warnings go to the log, the GeoTIFF tag ``input_warnings`` and the
    JSON sidecar ``<name>.json``, which also lists the per-channel statistics.

    Args:
        path: output class map (uint8, nodata 255, tiled and deflate-compressed).
        profile: the input's rasterio profile (CRS, transform, width, height are kept).
        class_names: names of the classes, written as a tag.
        tile: tile size in pixels.
        overlap: tile overlap in pixels (for the blending weights).
        probabilities_path: optional float32 GeoTIFF with one probability band per class.
        channel_names: names of the input channels, to check the inputs against training.
    """

    def __init__(self, path: str | Path, profile: dict, class_names: Sequence[str], tile: int,
                 overlap: int, probabilities_path: str | Path | None = None,
                 channel_names: Sequence[str] | None = None) -> None:
        self.width, self.height = int(profile["width"]), int(profile["height"])
        self.tile, self.k = tile, len(class_names)
        self.weights = blend_weights(tile, overlap)
        self.acc = np.zeros((self.k, tile, self.width), dtype=np.float32)
        self.wsum = np.zeros((tile, self.width), dtype=np.float32)
        self.valid = np.zeros((tile, self.width), dtype=bool)
        self.top = 0
        base = {"driver": "GTiff", "width": self.width, "height": self.height,
                "crs": profile.get("crs"), "transform": profile["transform"], "tiled": True,
                "blockxsize": 256, "blockysize": 256, "compress": "deflate"}
        if self.width < 256 or self.height < 256:
            base.update(tiled=False, blockxsize=None, blockysize=None)
            base = {k: v for k, v in base.items() if v is not None}
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(path)
        self.probabilities_path = Path(probabilities_path) if probabilities_path is not None else None
        self.metadata_path = self.path.with_suffix(".json")
        self.class_names = list(class_names)
        self.drift = InputDrift(channel_names) if channel_names is not None else None
        # final path -> temporary path, renamed by close()
        self._pending: dict[Path, Path] = {self.path: partial_path(self.path)}
        self.probs = None
        try:
            self.classes = rasterio.open(self._pending[self.path], "w", **base, count=1,
                                         dtype="uint8", nodata=NODATA_CLASS)
            self.classes.update_tags(class_names=json.dumps(self.class_names))
            self.classes.set_band_description(1, "class")
            if self.probabilities_path is not None:
                tmp = self._pending[self.probabilities_path] = partial_path(self.probabilities_path)
                self.probs = rasterio.open(tmp, "w", **base, count=self.k, dtype="float32",
                                           nodata=float("nan"))
                for i, name in enumerate(class_names, start=1):
                    self.probs.set_band_description(i, f"P({name})")
        except BaseException:
            self.abort()
            raise
        self.rows_written = 0
        self.metadata: dict[str, Any] = {}

    def __enter__(self) -> SceneWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def add(self, window: Window, probs: np.ndarray, valid: np.ndarray,
            image: np.ndarray | None = None) -> None:
        """Add a tile's class probabilities (K, tile, tile), its valid-pixel mask and, to check
        the inputs against training, its normalised network input (C, tile, tile)."""
        if image is not None and self.drift is not None:
            self.drift.add(image, valid)
        r0, c0 = int(window.row_off), int(window.col_off)
        if r0 < self.top:
            raise ValueError(f"windows must come row by row: got row {r0} after row {self.top}")
        if r0 > self.top:
            self._flush(min(r0, self.height) - self.top)
        c1 = min(c0 + self.tile, self.width)
        r1 = min(r0 + self.tile, self.height) - self.top
        w = self.weights[: r1, : c1 - c0]
        self.acc[:, :r1, c0:c1] += probs[:, :r1, : c1 - c0] * w
        self.wsum[:r1, c0:c1] += w
        self.valid[:r1, c0:c1] |= valid[:r1, : c1 - c0]

    def _flush(self, rows: int) -> None:
        if rows <= 0:
            return
        probs = self.acc[:, :rows] / np.maximum(self.wsum[:rows], 1e-12)
        valid = self.valid[:rows] & (self.wsum[:rows] > 0)
        classes = probs.argmax(axis=0).astype(np.uint8)
        classes[~valid] = NODATA_CLASS
        window = Window(0, self.top, self.width, rows)
        self.classes.write(classes, 1, window=window)
        if self.probs is not None:
            probs = probs.astype(np.float32)
            probs[:, ~valid] = np.nan
            self.probs.write(probs, window=window)
        # Shift the strip up: the flushed rows are final because windows come row-major.
        for buf in (self.acc, self.wsum, self.valid):
            view = buf[..., rows:, :] if buf.ndim == 3 else buf[rows:]
            if buf.ndim == 3:
                buf[:, : self.tile - rows] = view
                buf[:, self.tile - rows :] = 0
            else:
                buf[: self.tile - rows] = view
                buf[self.tile - rows :] = 0
        self.top += rows
        self.rows_written += rows

    def close(self) -> None:
        """Write the remaining rows, the input check and the sidecar, then give the outputs
        their final names."""
        try:
            self._flush(min(self.tile, self.height - self.top))
            self.metadata = {"classes": self.path.name, "class_names": self.class_names,
                             "probabilities": self.probabilities_path.name if self.probs else None}
            if self.drift is not None:
                self.metadata.update(self.drift.report(str(self.path)))
                self.classes.update_tags(input_warnings=json.dumps(self.metadata["input_warnings"]))
            self.classes.close()
            if self.probs is not None:
                self.probs.close()
            tmp = self._pending[self.metadata_path] = partial_path(self.metadata_path)
            tmp.write_text(json.dumps(self.metadata, indent=2))
        except BaseException:
            self.abort()
            raise
        for final, tmp in self._pending.items():
            os.replace(tmp, final)
        self._pending = {}

    def abort(self) -> None:
        """Close and delete the temporary outputs: nothing appears under the final names."""
        for ds in (getattr(self, "classes", None), self.probs):
            if ds is not None and not ds.closed:
                try:
                    ds.close()
                except Exception as err:  # noqa: BLE001 - cleanup must go on; the cause is raised
                    log.debug("closing a partial output failed: %s", err)
        for tmp in self._pending.values():
            tmp.unlink(missing_ok=True)
            tmp.with_name(tmp.name + ".aux.xml").unlink(missing_ok=True)
        self._pending = {}
