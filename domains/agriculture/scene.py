"""Whole-scene prediction: tile windows, blending of overlapping tiles, strip-wise GeoTIFF output.

Only numpy and rasterio: the same code serves Lightning ``predict`` and torch-free runtimes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

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


class SceneWriter:
    """Accumulate blended tile probabilities and write finished rows to GeoTIFF.

    Windows must arrive in row-major order (as from :func:`grid_windows`); memory holds one
    strip of ``tile`` rows across the scene, never the whole scene.

    Args:
        path: output class map (uint8, nodata 255, tiled and deflate-compressed).
        profile: the input's rasterio profile (CRS, transform, width, height are kept).
        class_names: names of the classes, written as a tag.
        tile: tile size in pixels.
        overlap: tile overlap in pixels (for the blending weights).
        probabilities_path: optional float32 GeoTIFF with one probability band per class.
    """

    def __init__(self, path: str | Path, profile: dict, class_names: Sequence[str], tile: int,
                 overlap: int, probabilities_path: str | Path | None = None) -> None:
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
        self.classes = rasterio.open(path, "w", **base, count=1, dtype="uint8", nodata=NODATA_CLASS)
        self.classes.update_tags(class_names=json.dumps(list(class_names)))
        self.classes.set_band_description(1, "class")
        self.probs = None
        if probabilities_path is not None:
            self.probs = rasterio.open(probabilities_path, "w", **base, count=self.k,
                                       dtype="float32", nodata=float("nan"))
            for i, name in enumerate(class_names, start=1):
                self.probs.set_band_description(i, f"P({name})")
        self.rows_written = 0

    def add(self, window: Window, probs: np.ndarray, valid: np.ndarray) -> None:
        """Add a tile's class probabilities (K, tile, tile) and its valid-pixel mask."""
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
        """Write the remaining rows and close the files."""
        self._flush(min(self.tile, self.height - self.top))
        self.classes.close()
        if self.probs is not None:
            self.probs.close()
