"""Features of GIS vector files (Shapefile, GeoPackage, FlatGeobuf, ...) as GeoJSON-like dicts.

GeoJSON is read by :mod:`domains.agriculture.detection_labels` with the standard library; every
other format goes through fiona (GDAL/OGR, the library QGIS and ``ogr2ogr`` write with), so the
features come back in the same shape as GeoJSON's and share its checks. What a GIS user hands
over and what is done with it:

* a Shapefile given by any of its parts (``.shp``, ``.dbf``, ``.shx``) is opened through its
  ``.shp``; a zipped Shapefile (``.zip``) is read inside the archive without unpacking;
* the CRS is the layer's own (a Shapefile's ``.prj``, a GeoPackage's ``srs_id``). A layer with
  none (a Shapefile without ``.prj``) is an error that names the fix, never a guess: map
  coordinates in an unknown CRS would silently land in the wrong place;
* a file with several layers (GeoPackage) needs ``layer``; the error lists the layer names;
* null geometries stay in the list (as ``geometry: None``) so the caller reports them by
  feature number like a GeoJSON's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rasterio.crs import CRS
from rasterio.errors import CRSError

from core.errors import DataError

#: Suffixes read directly as GeoJSON text (no GDAL).
GEOJSON_SUFFIXES = (".geojson", ".json")
_SHAPEFILE_PARTS = (".dbf", ".shx", ".prj", ".cpg")
#: Files that are (or zip) a Shapefile, whose field names are at most 10 characters.
SHAPEFILE_SUFFIXES = (".shp", ".zip", *_SHAPEFILE_PARTS)


def _source(path: Path) -> str:
    """The path fiona opens: a Shapefile by its .shp, a zip archive through GDAL's /vsizip/."""
    suffix = path.suffix.lower()
    if suffix in _SHAPEFILE_PARTS:
        for shp in (path.with_suffix(".shp"), path.with_suffix(".SHP")):
            if shp.is_file():
                return str(shp)
        raise DataError(f"labels '{path}' are one part of a Shapefile, but '{path.with_suffix('.shp')}' "
                        "is missing; give the .shp with its .shx, .dbf and .prj beside it")
    if suffix == ".zip":
        return f"zip://{path}"
    return str(path)


def _fiona():
    try:
        import fiona
    except ImportError as err:
        raise DataError("reading Shapefiles/GeoPackages needs fiona: pip install "
                        "'convnext-domains[agriculture]' (or convert the labels with ogr2ogr -f "
                        "GeoJSON objects.geojson objects.shp)") from err
    return fiona


def read_vector_features(path: str | Path, layer: str | None = None
                         ) -> tuple[list[dict[str, Any]], CRS]:
    """The features of one layer of an OGR vector file as GeoJSON-like ``Feature`` dicts, and
    the CRS of their coordinates.

    Args:
        path: the file (``.shp`` or another part of a Shapefile, ``.zip`` of one, ``.gpkg``,
            ``.fgb``, ``.gml``, ...).
        layer: the layer to read; needed when the file holds more than one.

    Raises:
        DataError: the file is missing or unreadable, the layer is ambiguous or unknown, or the
            layer has no CRS; each names the file and the fix.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"labels '{path}' do not exist; fix data.init_args.objects")
    fiona = _fiona()
    source = _source(path)
    try:
        layers = fiona.listlayers(source)
    except Exception as err:  # GDAL's DriverError/FionaValueError name no fix
        raise DataError(f"labels '{path}' are not a vector file GDAL can read ({err}); give a "
                        "GeoJSON, Shapefile (.shp with .shx/.dbf/.prj, or a .zip of them) or "
                        "GeoPackage") from None
    if layer is None and len(layers) > 1:
        raise DataError(f"labels '{path}' hold {len(layers)} layers ({', '.join(layers)}); set "
                        "data.init_args.objects_layer to the one with the objects")
    if layer is not None and layer not in layers:
        raise DataError(f"labels '{path}' have no layer '{layer}' (layers: {', '.join(layers)}); "
                        "fix data.init_args.objects_layer")
    try:
        with fiona.open(source, layer=layer or layers[0]) as src:
            wkt = src.crs_wkt
            features = [_as_dict(feature) for feature in src]
    except DataError:
        raise
    except Exception as err:
        raise DataError(f"labels '{path}' could not be read ({type(err).__name__}: {err}); re-export "
                        "them from your GIS, or convert with ogr2ogr -f GeoJSON") from None
    if not wkt:
        gdal_path = f"/vsizip/{path}" if path.suffix.lower() == ".zip" else str(path)
        raise DataError(f"labels '{path}' have no CRS (a Shapefile without its .prj?), so their map "
                        "coordinates cannot be placed on the scene; define the CRS they were drawn "
                        f"in (not necessarily the scene's): ogr2ogr -a_srs EPSG:<code> fixed.gpkg "
                        f"{gdal_path} (QGIS: Layer > Set CRS), then pass fixed.gpkg")
    try:
        crs = CRS.from_wkt(wkt)
    except CRSError as err:
        raise DataError(f"labels '{path}' declare a CRS rasterio cannot read ({err}); re-export them "
                        "with an EPSG code (ogr2ogr -t_srs EPSG:<code>)") from None
    return features, crs


def _as_dict(feature: Any) -> dict[str, Any]:
    """A fiona feature as a plain GeoJSON dict (lists, not tuples; JSON-safe property values)."""
    data = feature.__geo_interface__ if hasattr(feature, "__geo_interface__") else feature
    # The JSON round trip turns fiona's model objects and tuples into the plain types a GeoJSON
    # file gives, so both go through the same checks; dates become strings.
    return json.loads(json.dumps(data, default=str))
