"""Object labels of a scene as pixel boxes: GeoJSON features or a mask raster on the scene's grid.

Boxes are ``(N, 4)`` xyxy in continuous pixel-edge coordinates of the scene (see
:mod:`core.instance_masks`): pixel ``(row i, col j)`` covers ``[j, j+1) x [i, i+1)``.

GeoJSON (read with the standard library; no GDAL vector driver is needed):

* coordinates are in the CRS the file declares: a legacy ``crs`` member (``{"type": "name",
  "properties": {"name": "EPSG:32633"}}``, also the ``urn:ogc:def:crs:...`` forms, or
  ``{"type": "EPSG", "properties": {"code": 32633}}``), else RFC 7946's WGS84 longitude,
  latitude; they are reprojected to the scene's CRS when it differs;
* ``Polygon`` and ``MultiPolygon`` give the bounding box of their outer rings in pixels (exact
  for rotated transforms too: an affine map keeps vertices the extreme points); ``Point`` and
  ``MultiPoint`` need ``point_buffer``, a radius in the scene CRS's units (metres for UTM),
  and give the pixel box of that circle;
* the class is the feature property ``label_property``.

A feature without a usable geometry or with an unknown class is a bad annotation and follows
``on_bad_annotation`` (``error`` stops naming the file, the feature and the fix; ``skip`` leaves
that feature out and lists it in ``skipped_files.csv``; when its place is known, i.e. only its
class is bad, the tiles it touches are left out too, so the object never trains as background). Objects wholly outside the scene are
left out and counted in :attr:`SceneObjects.notes` (a label file covering a larger area is
normal); objects reaching past the scene's edge are clipped to it.

Other vector formats (Shapefile, zipped Shapefile, GeoPackage, FlatGeobuf, ...) are read with
fiona by :mod:`domains.agriculture.vector_files` into the same feature dicts, with the layer's
own CRS, and go through the same checks.
"""

from __future__ import annotations

import difflib
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from rasterio.crs import CRS
from rasterio.errors import CRSError
from rasterio.windows import Window

from core.annotations import BadAnnotationPolicy, unknown_class
from core.errors import DataError
from core.instance_masks import mask_components
from domains.agriculture.raster import LabelRaster, RasterStack, read_window
from domains.agriculture.vector_files import (
    GEOJSON_SUFFIXES,
    SHAPEFILE_SUFFIXES,
    read_vector_features,
)

log = logging.getLogger(__name__)

MaskKind = Literal["class", "instance"]
WGS84 = "EPSG:4326"


@dataclass
class SceneObjects:
    """Objects of a scene in its pixels.

    Attributes:
        boxes: ``(N, 4)`` float64 xyxy pixel-edge coordinates, clipped to the scene.
        areas: ``(N,)`` the unclipped box areas in pixels (the tile-border rule compares the
            visible part with the whole object).
        labels: ``(N,)`` int64 class indices into ``class_names``.
        class_names: object classes in index order.
        rows: per object, where it came from (``feature 3``, ``component 2``).
        notes: facts reported rather than fatal (objects outside the scene, assumed grids).
        ignored: ``(M, 4)`` boxes of skipped objects whose place is known (an unknown or
            missing class): tiles over them are left out of every split.
    """

    boxes: np.ndarray
    areas: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    rows: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    ignored: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))

    def __len__(self) -> int:
        return len(self.boxes)


def _note(notes: list[str], message: str) -> None:
    log.warning(message)
    notes.append(message)


def _clipped(boxes: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Boxes clipped to the scene, and which of them keep an area inside it."""
    clipped = boxes.copy()
    clipped[:, [0, 2]] = np.clip(clipped[:, [0, 2]], 0, width)
    clipped[:, [1, 3]] = np.clip(clipped[:, [1, 3]], 0, height)
    inside = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    return clipped, inside


def _finish(boxes: list, labels: list, rows: list, names: list[str], width: int, height: int,
            notes: list[str], what: str) -> SceneObjects:
    array = np.asarray(boxes, np.float64).reshape(-1, 4)
    clipped, inside = _clipped(array, width, height)
    outside = int((~inside).sum())
    if outside:
        _note(notes, f"{outside} object(s) of {what} lie wholly outside the {width}x{height} scene "
                     f"and were left out (e.g. {[r for r, k in zip(rows, inside, strict=True) if not k][:3]})")
    areas = (array[:, 2] - array[:, 0]) * (array[:, 3] - array[:, 1])
    return SceneObjects(clipped[inside], areas[inside], np.asarray(labels, np.int64).reshape(-1)[inside],
                        names, [r for r, k in zip(rows, inside, strict=True) if k], notes)


# ---- GeoJSON ---------------------------------------------------------------------------------
def geojson_crs(data: dict[str, Any], path: str) -> CRS:
    """The CRS a GeoJSON declares: its legacy ``crs`` member, else WGS84 lon/lat (RFC 7946)."""
    member = data.get("crs")
    if member is None:
        return CRS.from_user_input(WGS84)
    props = member.get("properties", {}) if isinstance(member, dict) else {}
    kind = member.get("type") if isinstance(member, dict) else None
    try:
        if kind == "name" and isinstance(props.get("name"), str):
            return CRS.from_user_input(props["name"])
        if kind == "EPSG" and props.get("code") is not None:
            return CRS.from_epsg(int(props["code"]))
    except (CRSError, ValueError, TypeError) as err:
        raise DataError(f"GeoJSON '{path}' declares crs {json.dumps(member)}, which is not a known "
                        f"CRS ({err}); write e.g. {{\"type\": \"name\", \"properties\": {{\"name\": "
                        "\"EPSG:32633\"}}, or remove the member for WGS84 lon/lat") from err
    raise DataError(f"GeoJSON '{path}' has a crs member {json.dumps(member)} that is neither a named "
                    "CRS nor an EPSG code; write {\"type\": \"name\", \"properties\": {\"name\": "
                    "\"EPSG:<code>\"}}, or remove it for WGS84 lon/lat")


def _positions(coords: Any, depth: int) -> np.ndarray:
    """Nested coordinate lists of the given depth (0: one position) as ``(N, 2)`` float."""
    def flatten(c: Any, d: int) -> list:
        if d == 0:
            if not isinstance(c, (list, tuple)) or len(c) < 2:
                raise ValueError("a position is not [x, y]")
            return [c[:2]]
        if not isinstance(c, (list, tuple)) or not c:
            raise ValueError("empty coordinates")
        return [p for item in c for p in flatten(item, d - 1)]

    try:
        xy = np.asarray(flatten(coords, depth), dtype=np.float64).reshape(-1, 2)
    except (TypeError, ValueError) as err:
        raise ValueError(f"coordinates are malformed ({err})") from err
    if not np.isfinite(xy).all():
        raise ValueError("coordinates hold a non-number (NaN or infinite)")
    return xy


def _ring_area(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def geometry_vertices(geometry: Any) -> tuple[np.ndarray, bool]:
    """The points that bound a geometry (outer rings of polygons, or points) and whether they
    are points (which need a buffer). Raises ValueError naming what is wrong."""
    if not isinstance(geometry, dict):
        raise ValueError("has no geometry (null)")
    kind, coords = geometry.get("type"), geometry.get("coordinates")
    if kind in ("Point", "MultiPoint"):
        return _positions(coords, 0 if kind == "Point" else 1), True
    if kind not in ("Polygon", "MultiPolygon"):
        raise ValueError(f"has a {kind} geometry; objects must be Polygon, MultiPolygon, Point or "
                         "MultiPoint")
    polygons = [coords] if kind == "Polygon" else coords
    if not isinstance(polygons, list) or not polygons:
        raise ValueError("has empty coordinates")
    rings = []
    for polygon in polygons:
        if not isinstance(polygon, list) or not polygon:
            raise ValueError("has a polygon without rings")
        ring = _positions(polygon[0], 1)  # holes never widen the box
        if len(ring) < 4:
            raise ValueError(f"has a ring of {len(ring)} position(s); a polygon ring needs at least 4 "
                             "(the first repeated last)")
        if _ring_area(ring) == 0:
            raise ValueError("has a polygon of zero area (all vertices on a line or one point)")
        rings.append(ring)
    return np.concatenate(rings), False


def geojson_features(path: str | Path, layer: str | None = None) -> tuple[list[dict[str, Any]], CRS]:
    """The features of a GeoJSON file (a FeatureCollection, one Feature, or a bare geometry), or
    of ``layer`` of another vector file (see :mod:`domains.agriculture.vector_files`), and the
    CRS of their coordinates."""
    path = Path(path).expanduser()
    if path.suffix.lower() not in GEOJSON_SUFFIXES:
        return read_vector_features(path, layer)
    if not path.is_file():
        raise DataError(f"labels '{path}' do not exist; fix data.init_args.objects")
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"labels '{path}' are not valid GeoJSON ({err}); re-export them as GeoJSON") from err
    if not isinstance(data, dict):
        raise DataError(f"labels '{path}' hold a JSON {type(data).__name__}, not a GeoJSON object")
    kind = data.get("type")
    if kind == "FeatureCollection":
        features = data.get("features")
        if not isinstance(features, list):
            raise DataError(f"GeoJSON '{path}' is a FeatureCollection without a 'features' list")
    elif kind == "Feature":
        features = [data]
    elif kind in ("Polygon", "MultiPolygon", "Point", "MultiPoint"):
        features = [{"type": "Feature", "geometry": data, "properties": {}}]
    else:
        raise DataError(f"labels '{path}' are JSON of type {kind!r}, not a GeoJSON FeatureCollection")
    return features, geojson_crs(data, str(path))


def _class_of(feature: dict[str, Any], prop: str, path: Path) -> str:
    props = feature.get("properties") or {}
    if prop not in props or props[prop] is None or props[prop] == "":
        close = difflib.get_close_matches(prop, [str(k) for k in props], n=1, cutoff=0.6)
        hint = f" (did you mean '{close[0]}'?)" if close and prop not in props else ""
        if prop not in props and len(prop) > 10 and path.suffix.lower() in SHAPEFILE_SUFFIXES:
            hint += "; Shapefile field names are cut to 10 characters"
        raise ValueError(f"has no '{prop}' property (has {sorted(props)}){hint}; set label_property to "
                         "the property holding the class")
    value = props[prop]
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # class codes exported as 3.0
    return str(value)


def _to_pixels(xy: np.ndarray, inverse) -> np.ndarray:
    cols = inverse.a * xy[:, 0] + inverse.b * xy[:, 1] + inverse.c
    rows = inverse.d * xy[:, 0] + inverse.e * xy[:, 1] + inverse.f
    return np.stack([cols, rows], axis=1)


def read_geojson_objects(path: str | Path, stack: RasterStack, label_property: str = "class",
                         class_order: Sequence[str] | None = None, point_buffer: float | None = None,
                         policy: BadAnnotationPolicy | None = None, layer: str | None = None
                         ) -> SceneObjects:
    """Objects of a vector file as pixel boxes of ``stack``'s scene (see the module docstring).

    Args:
        path: the GeoJSON, Shapefile, GeoPackage or other vector file.
        stack: the scene (its CRS, transform and size).
        label_property: the feature property holding the class.
        class_order: the classes in index order; another class is a bad annotation. Default:
            the sorted class names found.
        point_buffer: radius of Point objects in the scene CRS's units; None: points are bad.
        policy: ``on_bad_annotation``; default ``error``.
        layer: the layer of a multi-layer file (GeoPackage); None: its only layer.
    """
    from rasterio.warp import transform as warp

    policy = policy or BadAnnotationPolicy("error", [], left_out="the feature")
    features, crs = geojson_features(path, layer)
    skipped_before = len(policy.skipped)
    if stack.crs is None:
        raise DataError(f"scene '{stack.paths[0]}' has no CRS, so the map coordinates of '{path}' cannot "
                        "be placed on it; assign the scene's CRS (gdal_edit.py -a_srs EPSG:...) or "
                        "give the objects as a mask raster (objects_mask)")
    same = crs == stack.crs
    inverse = ~stack.transform
    raw: list[tuple[str, np.ndarray, bool, str | None]] = []
    for k, feature in enumerate(features):
        row = f"feature {k}" + (f" (id {feature['id']})" if isinstance(feature, dict) and "id" in feature else "")
        try:
            if not isinstance(feature, dict) or feature.get("type") != "Feature":
                raise ValueError("is not a GeoJSON Feature")
            xy, points = geometry_vertices(feature.get("geometry"))
            if points and not point_buffer:
                raise ValueError("is a point; set point_buffer (the object's radius in the scene CRS's "
                                 "units) to turn points into boxes, or draw the objects as polygons")
        except ValueError as err:
            policy(str(path), f"labels '{path}' {row} {err}")
            continue
        try:
            name = _class_of(feature, label_property, Path(path))
            if class_order is not None and name not in class_order:
                raise ValueError(unknown_class(name, class_order).replace("class_order", "class_labels"))
        except ValueError as err:
            policy(str(path), f"labels '{path}' {row} {err}")
            # Skipped, but its place is known: tiles over it are left out rather than trained
            # with the object as background.
            raw.append((row, xy, points, None))
            continue
        raw.append((row, xy, points, name))
    names = list(class_order) if class_order is not None else sorted({r[3] for r in raw if r[3] is not None})
    if not any(r[3] is not None for r in raw):
        reasons = [reason for _, reason in policy.skipped[skipped_before:]]
        first = f"; all skipped, the first because: {reasons[0]}" if reasons else ""
        raise DataError(f"labels '{path}' hold no usable object (of {len(features)} feature(s)){first}")
    counts = np.cumsum([0] + [len(r[1]) for r in raw])
    xy = np.concatenate([r[1] for r in raw])
    if not same:
        xs, ys = warp(crs, stack.crs, xy[:, 0].tolist(), xy[:, 1].tolist())
        xy = np.stack([np.asarray(xs), np.asarray(ys)], axis=1)
    pixels = _to_pixels(xy, inverse)
    # Half sides of a circle of radius r after the inverse affine map (exact for rotations).
    half = (np.array([math.hypot(inverse.a, inverse.b), math.hypot(inverse.d, inverse.e)])
            * (point_buffer or 0.0))
    boxes, labels, rows, ignored = [], [], [], []
    index = {n: i for i, n in enumerate(names)}
    for j, (row, _, points, name) in enumerate(raw):
        p = pixels[counts[j]:counts[j + 1]]
        if not np.isfinite(p).all():
            policy(str(path), f"labels '{path}' {row} could not be reprojected from {crs} to the scene's "
                              f"{stack.crs} (outside the projection's area?)")
            continue
        lo, hi = p.min(axis=0), p.max(axis=0)
        if points:
            lo, hi = lo - half, hi + half
        if name is None:
            ignored.append([lo[0], lo[1], hi[0], hi[1]])
            continue
        boxes.append([lo[0], lo[1], hi[0], hi[1]])
        labels.append(index[name])
        rows.append(row)
    notes: list[str] = []
    if not same:
        log.info("objects of '%s' reprojected from %s to the scene's %s", path, crs, stack.crs)
    found = _finish(boxes, labels, rows, names, stack.width, stack.height, notes, f"'{path}'")
    clipped, inside = _clipped(np.asarray(ignored, np.float64).reshape(-1, 4), stack.width, stack.height)
    found.ignored = clipped[inside]
    return found


# ---- mask rasters ----------------------------------------------------------------------------
class ObjectMaskRaster(LabelRaster):
    """A mask raster placed on the scene grid by :class:`LabelRaster`'s rules (same grid; an
    ungeoreferenced mask of the scene's size, with a note; or warped with ``reproject``), read
    as its raw values."""

    def read_values(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """Raw mask values and the valid mask (False for the file's nodata and outside it)."""
        return read_window(self._reader(), 1, window)


def read_mask_objects(path: str | Path, stack: RasterStack, kind: MaskKind = "class",
                      class_values: Sequence[int] | None = None, class_names: Sequence[str] | None = None,
                      min_area: int = 4, reproject: bool = False) -> SceneObjects:
    """Objects of a mask raster on the scene grid as pixel boxes.

    Args:
        path: the mask GeoTIFF (first band).
        stack: the scene.
        kind: ``class``: every connected component (8-connected) of a class code is one object;
            ``instance``: every distinct non-zero code is one object (touching objects stay
            apart), all of the one class.
        class_values: ``class`` masks: the codes of the classes in class order; default: every
            non-zero code is one class (binary mask).
        class_names: names of the classes (default ``class_<code>``, ``object`` for one class).
        min_area: objects with fewer pixels are dropped (speckle) and counted.
        reproject: warp a mask on another grid onto the scene's (nearest neighbour).
    """
    values = [int(v) for v in class_values] if class_values else None
    if kind not in ("class", "instance"):
        raise DataError(f"mask_kind is '{kind}'; use class or instance")
    if kind == "instance" and values is not None and len(values) > 1:
        raise DataError("an instance mask gives objects of one class; remove class_values, or use "
                        "mask_kind: class with a mask whose codes are classes")
    # LabelRaster places the mask on the scene grid; its class mapping is not used here.
    mask = ObjectMaskRaster(str(path), stack, values or [1], reproject=reproject)
    notes = list(mask.warnings)
    raw, valid = mask.read_values(Window(0, 0, stack.width, stack.height))
    raw = np.where(valid, raw, 0)
    if kind == "instance":
        codes = [int(c) for c in np.unique(raw) if c != 0]
        names = list(class_names or ["object"])
        boxes, rows, dropped = [], [], 0
        for code in codes:
            rr, cc = np.nonzero(raw == code)
            if len(rr) < min_area:
                dropped += 1
                continue
            boxes.append([cc.min(), rr.min(), cc.max() + 1, rr.max() + 1])
            rows.append(f"instance {code}")
        labels = [0] * len(boxes)
    else:
        binary = values is None
        found = mask_components(raw if not binary else (raw != 0).astype(np.uint8),
                                values, threshold=0.5 if binary else None, min_area=min_area)
        names = list(class_names or (["object"] if binary else [f"class_{v}" for v in values]))
        boxes, labels, dropped = found.boxes.tolist(), found.classes.tolist(), found.dropped
        rows = [f"component {i}" for i in range(len(boxes))]
    if len(names) != (1 if kind == "instance" or values is None else len(values)):
        raise DataError(f"{len(names)} class_labels for {1 if values is None else len(values)} class(es) "
                        f"of mask '{path}'; give one name per class value")
    if dropped:
        _note(notes, f"{dropped} object(s) of mask '{path}' have fewer than {min_area} pixels "
                     "(min_mask_area) and were left out")
    if not boxes:
        raise DataError(f"mask '{path}' has no object (no component of {values or 'non-zero codes'} with "
                        f"{min_area}+ pixels); check class_values and the mask")
    return _finish(boxes, labels, rows, names, stack.width, stack.height, notes, f"mask '{path}'")
