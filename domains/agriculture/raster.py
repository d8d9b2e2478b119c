"""GeoTIFF reading with rasterio: band selection by name, nodata, grid checks, windowed reads only."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from core.errors import DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Band:
    """One selected band: which file, which 1-based band in it, and its name."""

    path: str
    index: int
    name: str


def window_inside(window: Window, width: int, height: int) -> bool:
    """Whether ``window`` lies inside a ``width`` x ``height`` raster (plain reads are faster)."""
    return (window.col_off >= 0 and window.row_off >= 0
            and window.col_off + window.width <= width and window.row_off + window.height <= height)


def _open(path: str) -> rasterio.DatasetReader:
    if not Path(path).expanduser().is_file():
        raise DataError(f"raster '{path}' does not exist; fix the path in the config")
    try:
        return rasterio.open(Path(path).expanduser())
    except rasterio.errors.RasterioIOError as err:
        raise DataError(f"cannot open raster '{path}' ({err}); is it a GeoTIFF?") from err


def _band_names(ds: rasterio.DatasetReader, path: str, single_file: bool) -> list[str]:
    """Default names: band descriptions, else B1..Bn (one file) or the file stem (a band per file)."""
    if all(ds.descriptions) and ds.count:
        return list(ds.descriptions)
    if single_file:
        return [f"B{i}" for i in range(1, ds.count + 1)]
    stem = Path(path).stem
    return [stem] if ds.count == 1 else [f"{stem}_{i}" for i in range(1, ds.count + 1)]


class RasterStack:
    """A multiband image: one multiband GeoTIFF or one file per band, on one pixel grid.

    Only windows are ever read, so scenes larger than memory work. File handles are opened
    lazily and not pickled, so a stack can be sent to dataloader workers.

    Args:
        paths: one multiband file, or a list of files (one or more bands each).
        bands: bands to use, by name or 1-based index; default all, in file order.
        band_names: names for all bands, in file order (default: the files' band
            descriptions, else B1..Bn for one file, or the file stem with one file per band).
        nodata: value marking missing pixels, overriding the files' own nodata.
    """

    def __init__(
        self,
        paths: str | Sequence[str],
        bands: Sequence[str | int] | None = None,
        band_names: Sequence[str] | None = None,
        nodata: float | None = None,
    ) -> None:
        self.paths = [str(paths)] if isinstance(paths, str | Path) else [str(p) for p in paths]
        if not self.paths:
            raise DataError("no image files given")
        available: list[Band] = []
        nodatas: dict[str, float | None] = {}
        for path in self.paths:
            with _open(path) as ds:
                self._check_grid(ds, path)
                names = _band_names(ds, path, len(self.paths) == 1)
                available += [Band(path, i + 1, n) for i, n in enumerate(names)]
                nodatas[path] = ds.nodata
        if band_names is not None:
            if len(band_names) != len(available):
                raise DataError(f"band_names lists {len(band_names)} names but the image has "
                                f"{len(available)} band(s) in {len(self.paths)} file(s)")
            available = [Band(b.path, b.index, n) for b, n in zip(available, band_names, strict=True)]
        self.bands = self._select(available, bands)
        self.names = [b.name for b in self.bands]
        self.nodata = {b.name: nodata if nodata is not None else nodatas[b.path] for b in self.bands}
        self._handles: dict[str, rasterio.DatasetReader] = {}

    def _check_grid(self, ds: rasterio.DatasetReader, path: str) -> None:
        if not hasattr(self, "crs"):
            self.crs, self.transform = ds.crs, ds.transform
            self.width, self.height = ds.width, ds.height
            self.profile = ds.profile
            return
        if (ds.width, ds.height) != (self.width, self.height) or ds.transform != self.transform:
            raise DataError(
                f"band file '{path}' ({ds.width}x{ds.height}, {ds.transform[2]:.2f},{ds.transform[5]:.2f}) "
                f"is not on the grid of '{self.paths[0]}' ({self.width}x{self.height}); resample all "
                "band files to one grid (e.g. gdalwarp -tr/-te) before training"
            )
        if ds.crs != self.crs:
            raise DataError(f"band file '{path}' has CRS {ds.crs} but '{self.paths[0]}' has {self.crs}; "
                            "reproject the band files to one CRS")

    @staticmethod
    def _select(available: list[Band], wanted: Sequence[str | int] | None) -> list[Band]:
        if wanted is None:
            return available
        names = [b.name for b in available]
        chosen = []
        for item in wanted:
            if isinstance(item, int) or (isinstance(item, str) and item.isdigit() and item not in names):
                i = int(item)
                if not 1 <= i <= len(available):
                    raise DataError(f"band index {i} out of range: the image has bands 1..{len(available)} ({', '.join(names)})")
                chosen.append(available[i - 1])
            elif item in names:
                chosen.append(available[names.index(item)])
            else:
                raise DataError(f"band '{item}' not in the image (has {', '.join(names)}); fix `bands` "
                                "or name the bands with `band_names`")
        return chosen

    # -- pickling for dataloader workers: handles are per process --
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state

    def _handle(self, path: str) -> rasterio.DatasetReader:
        if path not in self._handles:
            self._handles[path] = rasterio.open(Path(path).expanduser())
        return self._handles[path]

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles = {}

    @property
    def count(self) -> int:
        return len(self.bands)

    def read(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """Read ``window`` (may extend past the edges) as (CHW float32, HW valid mask).

        Pixels outside the raster, equal to a band's nodata or not finite are invalid; a pixel
        is valid only when every band is.
        """
        h, w = int(window.height), int(window.width)
        out = np.empty((self.count, h, w), dtype=np.float32)
        valid = np.ones((h, w), dtype=bool)
        for c, band in enumerate(self.bands):
            nodata = self.nodata[band.name]
            fill = nodata if nodata is not None else np.nan
            data = self._handle(band.path).read(band.index, window=window,
                                                boundless=not window_inside(window, self.width, self.height),
                                                fill_value=fill).astype(np.float32)
            band_valid = np.isfinite(data)
            if nodata is not None and np.isfinite(nodata):
                band_valid &= data != np.float32(nodata)
            inside = np.zeros((h, w), dtype=bool)
            r0, c0 = int(window.row_off), int(window.col_off)
            inside[max(0, -r0):max(0, min(h, self.height - r0)),
                   max(0, -c0):max(0, min(w, self.width - c0))] = True
            valid &= band_valid & inside
            out[c] = data
        out[:, ~valid] = np.nan
        return out, valid


class LabelRaster:
    """A label raster on the image's grid: dense class codes or sparse labelled pixels.

    Values listed in ``class_values`` become class indices 0..K-1; everything else (0, the
    file's nodata, unknown codes) is unlabelled and maps to ``ignore_index``.

    Args:
        path: label GeoTIFF (first band is used).
        image: the :class:`RasterStack` whose grid the labels must share.
        class_values: raster codes of the classes, in class order.
        ignore_index: value for unlabelled pixels.
        reproject: warp the labels onto the image grid (nearest neighbour) instead of failing
            when the grids differ.
    """

    def __init__(self, path: str, image: RasterStack, class_values: Sequence[int],
                 ignore_index: int = 255, reproject: bool = False) -> None:
        self.path, self.ignore_index = str(path), ignore_index
        self.class_values = [int(v) for v in class_values]
        self.reproject = False
        self.warnings: list[str] = []
        with _open(self.path) as ds:
            self.nodata = ds.nodata
            same_grid = (ds.transform.almost_equals(image.transform)
                         and (ds.width, ds.height) == (image.width, image.height))
            tag_differs = ds.crs != image.crs or str(ds.crs) != str(image.crs)
            if same_grid and tag_differs:
                # A mislabelled CRS on an identical grid: the pixels align, so report and go on.
                msg = (f"label raster '{self.path}' says CRS {ds.crs} but the image says {image.crs}; "
                       "transform and size are identical, so the pixels are used as they are")
                log.warning(msg)
                self.warnings.append(msg)
            elif not same_grid:
                if not reproject:
                    raise DataError(
                        f"label raster '{self.path}' (CRS {ds.crs}, {ds.width}x{ds.height}, origin "
                        f"{ds.transform[2]:.2f},{ds.transform[5]:.2f}) is not on the image grid (CRS "
                        f"{image.crs}, {image.width}x{image.height}, origin {image.transform[2]:.2f},"
                        f"{image.transform[5]:.2f}); set reproject_labels: true to warp it onto the "
                        "image grid (nearest neighbour), or fix the file"
                    )
                self.reproject = True
        self._image = image
        self._handle: rasterio.DatasetReader | WarpedVRT | None = None
        self._lut_values = np.array(self.class_values)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_handle"] = None
        return state

    def _reader(self):
        if self._handle is None:
            ds = rasterio.open(Path(self.path).expanduser())
            if self.reproject:
                img = self._image
                self._handle = WarpedVRT(ds, crs=img.crs, transform=img.transform, width=img.width,
                                         height=img.height, resampling=Resampling.nearest)
            else:
                self._handle = ds
        return self._handle

    def read(self, window: Window) -> np.ndarray:
        """Class indices for ``window`` as HW int64; unlabelled pixels are ``ignore_index``."""
        fill = self.nodata if self.nodata is not None else 0
        img = self._image
        raw = self._reader().read(1, window=window, fill_value=fill,
                                  boundless=not window_inside(window, img.width, img.height))
        out = np.full(raw.shape, self.ignore_index, dtype=np.int64)
        for k, value in enumerate(self.class_values):
            out[raw == value] = k
        return out
