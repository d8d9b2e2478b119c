"""GeoTIFF reading with rasterio: band selection by name, nodata, grid checks, windowed reads only."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import ColorInterp, MaskFlags, Resampling
from rasterio.errors import NotGeoreferencedWarning, WindowError
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


def read_window(ds: rasterio.DatasetReader | WarpedVRT, index: int, window: Window,
                use_mask: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Band ``index`` over ``window``, which may run past the raster's edges.

    Only the part of the window inside the raster is read, then placed into the full window,
    so no fill value has to fit the band's dtype (NaN cannot fill uint8) and a WarpedVRT,
    which refuses boundless reads, works the same as a file.

    Args:
        ds: an open dataset or WarpedVRT.
        index: 1-based band index.
        window: the window to read, in pixels of ``ds``.
        use_mask: take the dataset's own mask (nodata, alpha band, internal mask) into account.

    Returns:
        The values (the band's dtype, 0 where nothing was read) and the HW valid mask: False
        outside the raster and where the dataset's mask marks pixels invalid.
    """
    h, w = int(window.height), int(window.width)
    out = np.zeros((h, w), dtype=ds.dtypes[index - 1])
    valid = np.zeros((h, w), dtype=bool)
    try:
        part = window.intersection(Window(0, 0, ds.width, ds.height))
    except WindowError:
        return out, valid  # entirely outside the raster
    data = ds.read(index, window=part, masked=use_mask)
    r0, c0 = int(part.row_off - window.row_off), int(part.col_off - window.col_off)
    ph, pw = data.shape
    out[r0 : r0 + ph, c0 : c0 + pw] = np.ma.getdata(data)
    valid[r0 : r0 + ph, c0 : c0 + pw] = ~np.ma.getmaskarray(data) if use_mask else True
    return out, valid


def is_georeferenced(ds: rasterio.DatasetReader) -> bool:
    """Whether a raster carries a CRS or a geotransform (plain TIFFs from annotation tools don't)."""
    return ds.crs is not None or not ds.transform.is_identity


def _open(path: str) -> rasterio.DatasetReader:
    if not Path(path).expanduser().is_file():
        raise DataError(f"raster '{path}' does not exist; fix the path in the config")
    try:
        with warnings.catch_warnings():
            # Ungeoreferenced rasters are reported by the callers in their own terms.
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(Path(path).expanduser())
    except rasterio.errors.RasterioIOError as err:
        raise DataError(f"cannot open raster '{path}' ({err}); is it a GeoTIFF?") from err


def _image_bands(ds: rasterio.DatasetReader, path: str) -> list[int]:
    """1-based indices of the image bands: an alpha band only marks valid pixels (dataset mask)."""
    # rasterio names complex types complex64, complex128 and complex_int16 (GDAL CInt16).
    if any(str(d).startswith("complex") for d in ds.dtypes):
        raise DataError(
            f"raster '{path}' holds complex values ({', '.join(sorted(set(ds.dtypes)))}, e.g. SAR "
            "single-look complex data); the network needs real bands: convert it first to "
            "amplitude |z| or intensity in dB (e.g. a GDAL VRT with the 'mod' or 'dB' pixel "
            "function, or SNAP/ESA tools), then train and predict on that file"
        )
    bands = [i for i, ci in enumerate(ds.colorinterp, start=1) if ci != ColorInterp.alpha]
    if len(bands) < ds.count:
        log.info("raster '%s': band %s is an alpha band; it marks valid pixels and is not a "
                 "channel", path, ", ".join(str(i) for i in range(1, ds.count + 1) if i not in bands))
    return bands


def _band_names(ds: rasterio.DatasetReader, path: str, single_file: bool,
                bands: Sequence[int]) -> tuple[list[str], bool]:
    """Default names and whether they are descriptive: band descriptions, else B1..Bn by
    position (one file) or the file stem (a band per file)."""
    descriptions = [ds.descriptions[i - 1] for i in bands]
    if all(descriptions) and bands:
        return list(descriptions), True
    if single_file:
        return [f"B{i}" for i in bands], False
    stem = Path(path).stem
    return ([stem], True) if len(bands) == 1 else ([f"{stem}_{i}" for i in bands], False)


class RasterStack:
    """A multiband image: one multiband GeoTIFF or one file per band, on one pixel grid.

    Only windows are ever read, so scenes larger than memory work. File handles are opened
    lazily and not pickled, so a stack can be sent to dataloader workers.

    Args:
        paths: one multiband file, or a list of files (one or more bands each).
        bands: bands to use, by name or 1-based index; default all, in file order.
        band_names: names for all bands, in file order (default: the files' band
            descriptions, else B1..Bn by position for one file, or the file stem with one file
            per band). Alpha bands are not bands here: they mark valid pixels.
        nodata: value marking missing pixels, overriding the files' own nodata.

    Attributes:
        file_band_count: number of bands available in the file(s), alpha bands excluded.
        names_by_position: the names are positions (B1..Bn), not descriptions or ``band_names``.
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
        self.names_by_position = False
        masks: dict[tuple[str, int], bool] = {}
        for path in self.paths:
            with _open(path) as ds:
                self._check_grid(ds, path)
                indices = _image_bands(ds, path)
                names, described = _band_names(ds, path, len(self.paths) == 1, indices)
                self.names_by_position |= not described
                available += [Band(path, i, n) for i, n in zip(indices, names, strict=True)]
                nodatas[path] = ds.nodata
                for i in indices:
                    # Read the dataset mask only for an alpha band or an internal mask: a mask
                    # that is just the nodata value is cheaper to compare (see read), and the
                    # `nodata` option replaces the file's value.
                    # (No flags at all means a per-band mask band.)
                    flags = set(ds.mask_flag_enums[i - 1])
                    masks[(path, i)] = not flags or not flags <= {MaskFlags.all_valid, MaskFlags.nodata}
        self.file_band_count = len(available)
        if band_names is not None:
            if len(band_names) != len(available):
                raise DataError(f"band_names lists {len(band_names)} names but the image has "
                                f"{len(available)} band(s) in {len(self.paths)} file(s)")
            available = [Band(b.path, b.index, n) for b, n in zip(available, band_names, strict=True)]
            self.names_by_position = False
        self.bands = self._select(available, bands)
        self.names = [b.name for b in self.bands]
        self.nodata = {b.name: nodata if nodata is not None else nodatas[b.path] for b in self.bands}
        self._use_mask = {b.name: masks[(b.path, b.index)] for b in self.bands}
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
            self._handles[path] = _open(path)
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

        Pixels outside the raster, masked by the file (nodata, alpha band, internal mask), equal
        to the ``nodata`` override or not finite are invalid; a pixel is valid only when every
        band is. Works for every real dtype, with or without a nodata tag.
        """
        h, w = int(window.height), int(window.width)
        out = np.empty((self.count, h, w), dtype=np.float32)
        valid = np.ones((h, w), dtype=bool)
        for c, band in enumerate(self.bands):
            raw, band_valid = read_window(self._handle(band.path), band.index, window,
                                          self._use_mask[band.name])
            nodata = self.nodata[band.name]
            if nodata is not None and not np.isnan(nodata):
                band_valid &= raw != nodata  # compared in the band's own dtype, before rounding
            with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf: invalid
                data = raw.astype(np.float32)
            valid &= band_valid & np.isfinite(data)
            out[c] = data
        out[:, ~valid] = np.nan
        return out, valid


class LabelRaster:
    """A label raster on the image's grid: dense class codes or sparse labelled pixels.

    Values listed in ``class_values`` become class indices 0..K-1; everything else (0, the
    file's nodata, unknown codes, pixels outside the label raster) is unlabelled and maps to
    ``ignore_index``.

    A label raster without georeferencing (no CRS, no transform: how annotation tools export
    masks) is taken to lie on the image grid when its size equals the image's; that assumption
    is logged and listed in :attr:`warnings`.

    Args:
        path: label GeoTIFF (first band is used).
        image: the :class:`RasterStack` whose grid the labels must share.
        class_values: raster codes of the classes, in class order.
        ignore_index: value for unlabelled pixels.
        reproject: warp the labels onto the image grid (nearest neighbour) instead of failing
            when the grids differ (both rasters need a CRS).
    """

    def __init__(self, path: str, image: RasterStack, class_values: Sequence[int],
                 ignore_index: int = 255, reproject: bool = False) -> None:
        self.path, self.ignore_index = str(path), ignore_index
        self.class_values = [int(v) for v in class_values]
        self.reproject = False
        self.warnings: list[str] = []
        with _open(self.path) as ds:
            self.nodata = ds.nodata
            same_size = (ds.width, ds.height) == (image.width, image.height)
            same_grid = ds.transform.almost_equals(image.transform) and same_size
            image_geo = image.crs is not None or not image.transform.is_identity
            if not is_georeferenced(ds) or not image_geo:
                self._place_by_size(ds, image, same_size, image_geo)
            elif same_grid and (ds.crs != image.crs or str(ds.crs) != str(image.crs)):
                # A mislabelled CRS on an identical grid: the pixels align, so report and go on.
                self._note(f"label raster '{self.path}' says CRS {ds.crs} but the image says "
                           f"{image.crs}; transform and size are identical, so the pixels are used "
                           "as they are")
            elif not same_grid:
                if not reproject:
                    raise DataError(
                        f"label raster '{self.path}' (CRS {ds.crs}, {ds.width}x{ds.height}, origin "
                        f"{ds.transform[2]:.2f},{ds.transform[5]:.2f}) is not on the image grid (CRS "
                        f"{image.crs}, {image.width}x{image.height}, origin {image.transform[2]:.2f},"
                        f"{image.transform[5]:.2f}); set reproject_labels: true to warp it onto the "
                        "image grid (nearest neighbour), or fix the file"
                    )
                if ds.crs is None or image.crs is None:
                    which = f"label raster '{self.path}'" if ds.crs is None else f"image '{image.paths[0]}'"
                    raise DataError(f"reproject_labels needs a CRS on both rasters, but the {which} "
                                    "has none; assign it (e.g. gdal_edit.py -a_srs EPSG:...) or "
                                    "write the labels on the image grid")
                self.reproject = True
                self._add_alpha = ds.nodata is None
        self._image = image
        self._handle: rasterio.DatasetReader | WarpedVRT | None = None

    def _note(self, msg: str) -> None:
        log.warning(msg)
        self.warnings.append(msg)

    def _place_by_size(self, ds: rasterio.DatasetReader, image: RasterStack, same_size: bool,
                       image_geo: bool) -> None:
        """One raster has no georeferencing: only an identical size places it on the image grid."""
        label_geo = is_georeferenced(ds)
        if not same_size:
            lacking = (f"label raster '{self.path}' has no georeferencing (no CRS or transform)"
                       if not label_geo else f"image '{image.paths[0]}' has no georeferencing")
            raise DataError(
                f"{lacking} and its size differs: labels {ds.width}x{ds.height}, image "
                f"{image.width}x{image.height}, so the labels cannot be placed on the image grid; "
                "export the label mask at the image's size (same width and height), or "
                "georeference both rasters"
            )
        if label_geo or image_geo:
            which = "label raster" if not label_geo else "image"
            self._note(f"{which} '{self.path if not label_geo else image.paths[0]}' has no "
                       f"georeferencing (no CRS or transform); the label raster '{self.path}' has "
                       f"the image's size ({ds.width}x{ds.height}), so it is assumed to lie on the "
                       "image grid, pixel for pixel")

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_handle"] = None
        return state

    def _reader(self) -> rasterio.DatasetReader | WarpedVRT:
        if self._handle is None:
            ds = _open(self.path)
            if self.reproject:
                img = self._image
                # Without a nodata value the warp adds an alpha band, so pixels the label raster
                # does not cover are masked rather than read as code 0.
                self._handle = WarpedVRT(ds, crs=img.crs, transform=img.transform, width=img.width,
                                         height=img.height, resampling=Resampling.nearest,
                                         add_alpha=self._add_alpha)
            else:
                self._handle = ds
        return self._handle

    def read(self, window: Window) -> np.ndarray:
        """Class indices for ``window`` as HW int64; unlabelled pixels are ``ignore_index``.

        ``window`` may run past the scene's edges (also when the labels are warped).
        """
        raw, valid = read_window(self._reader(), 1, window)
        out = np.full(raw.shape, self.ignore_index, dtype=np.int64)
        for k, value in enumerate(self.class_values):
            out[(raw == value) & valid] = k
        return out
