"""Whole-scene object detection: tile detections merged into scene boxes, written as GeoJSON + CSV.

numpy only (rasterio imported where a CRS is reprojected): Lightning ``predict`` and the
torch-free bundle predictor run the same code.

The merge rule (:class:`SceneDetections`), in order:

1. each tile's detections are moved to scene pixels (``window`` offset, and the network
   input's scale when it differs from the tile); those with ``score < score_threshold`` go;
2. a detection whose box centre falls on a nodata pixel (of its tile's valid mask) goes;
3. a detection within ``edge_margin`` pixels of an *inner* tile edge (an edge that is not the
   scene's) is taken as truncated by the tile border. It goes when a whole (not truncated)
   detection of the same class from another tile covers at least half of its area: that
   tile saw the object whole. Objects no larger than the overlap lie whole inside some tile,
   so they come out once, untruncated;
4. truncated detections left (objects larger than the overlap, cut in every tile) that
   overlap a truncated same-class detection of another tile are pieces of one object: they
   are merged into their union box, with the highest score;
5. class-wise non-maximum suppression over the scene (IoU >= ``nms_iou``, highest score kept)
   removes the duplicates of objects seen whole by two overlapping tiles.

So an object cut by a tile border gives one box.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.atomic import write_atomic

SCENE_DETECTIONS = "{stem}_detections.geojson"
SCENE_DETECTIONS_WGS84 = "{stem}_detections_wgs84.geojson"
SCENE_DETECTIONS_CSV = "{stem}_detections.csv"


@dataclass(frozen=True)
class TileWindow:
    """A tile's place in the scene, in pixels: column and row offset, width and height."""

    col_off: int
    row_off: int
    width: int
    height: int

    @classmethod
    def of(cls, window: Any) -> TileWindow:
        """From a rasterio ``Window`` or a ``(col_off, row_off, width, height)`` sequence."""
        if hasattr(window, "col_off"):
            return cls(int(window.col_off), int(window.row_off), int(window.width), int(window.height))
        c, r, w, h = (int(v) for v in window)
        return cls(c, r, w, h)


def area(boxes: np.ndarray) -> np.ndarray:
    """Areas of xyxy boxes (one box or ``(N, 4)``)."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def intersection(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Intersection areas of one xyxy box with ``(N, 4)`` boxes."""
    ix = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    iy = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    return ix * iy


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box with ``(N, 4)`` boxes."""
    inter = intersection(box, boxes)
    return inter / np.maximum(area(box) + area(boxes) - inter, 1e-12)


class BoxGrid:
    """Boxes bucketed by class and ``cell``-pixel grid cell, so a box is compared only with
    the boxes near it: work over a scene grows with its area, not quadratically.

    Args:
        boxes: ``(N, 4)`` xyxy boxes to index (more can be added).
        labels: ``(N,)`` their classes.
        cell: grid cell side in pixels.
    """

    def __init__(self, boxes: np.ndarray, labels: np.ndarray, cell: float) -> None:
        self.cell = cell
        self.buckets: dict[tuple[int, int, int], list[int]] = defaultdict(list)
        for i, (b, k) in enumerate(zip(boxes, labels, strict=True)):
            self.add(i, b, int(k))

    def _cells(self, box: np.ndarray, label: int) -> list[tuple[int, int, int]]:
        c = self.cell
        return [(label, cx, cy) for cx in range(int(box[0] // c), int(box[2] // c) + 1)
                for cy in range(int(box[1] // c), int(box[3] // c) + 1)]

    def add(self, index: int, box: np.ndarray, label: int) -> None:
        for key in self._cells(box, label):
            self.buckets[key].append(index)

    def near(self, box: np.ndarray, label: int) -> np.ndarray:
        """Indices of the boxes of class ``label`` sharing a grid cell with ``box``."""
        found = {j for key in self._cells(box, label) for j in self.buckets.get(key, ())}
        return np.asarray(sorted(found), np.int64)


def nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou: float,
        cell: float = 256.0) -> np.ndarray:
    """Indices kept by class-wise greedy NMS (highest score first), in index order."""
    order = np.lexsort((np.arange(len(scores)), -scores))
    grid = BoxGrid(np.zeros((0, 4)), np.zeros(0, np.int64), cell)
    kept: list[int] = []
    for i in order:
        near = grid.near(boxes[i], int(labels[i]))
        if len(near) and (box_iou(boxes[i], boxes[near]) >= iou).any():
            continue
        kept.append(int(i))
        grid.add(int(i), boxes[i], int(labels[i]))
    return np.asarray(sorted(kept), np.int64)


class SceneDetections:
    """Collects tile detections of one scene and merges them (see the module docstring).

    Args:
        width: scene width in pixels.
        height: scene height in pixels.
        tile: tile side in scene pixels.
        score_threshold: detections with a lower score are dropped.
        nms_iou: IoU at or above which the lower-scored of two same-class detections goes.
        edge_margin: pixels from an inner tile edge within which a detection counts as truncated.
        input_size: side of the network input, when tiles are resized to it (default ``tile``).
    """

    def __init__(self, width: int, height: int, tile: int, score_threshold: float = 0.5,
                 nms_iou: float = 0.5, edge_margin: float = 2.0, input_size: int | None = None) -> None:
        self.width, self.height, self.tile = int(width), int(height), int(tile)
        self.score_threshold, self.nms_iou, self.edge_margin = float(score_threshold), float(nms_iou), float(edge_margin)
        self.scale = self.tile / float(input_size or tile)
        self.windows: list[TileWindow] = []
        self._boxes: list[np.ndarray] = []
        self._scores: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self._tiles: list[np.ndarray] = []
        self.dropped = {"below_threshold": 0, "nodata": 0, "truncated_seen_whole_elsewhere": 0,
                        "duplicate": 0, "merged_truncated": 0}

    def inner_edges(self, w: TileWindow) -> tuple[bool, bool, bool, bool]:
        """Which of a tile's edges (left, top, right, bottom) lie inside the scene."""
        return (w.col_off > 0, w.row_off > 0, w.col_off + w.width < self.width,
                w.row_off + w.height < self.height)

    def add(self, window: Any, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
            valid: np.ndarray | None = None) -> None:
        """One tile's detections: ``boxes`` (N, 4) xyxy in the network input's pixels, ``scores``,
        0-based ``labels``, and the tile's valid-pixel mask (H, W) (None: all valid)."""
        w = TileWindow.of(window)
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4) * self.scale
        scores = np.asarray(scores, np.float64).reshape(-1)
        labels = np.asarray(labels, np.int64).reshape(-1)
        keep = scores >= self.score_threshold
        self.dropped["below_threshold"] += int((~keep).sum())
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        if valid is not None and len(boxes):
            valid = np.asarray(valid, bool)
            cx = np.clip(((boxes[:, 0] + boxes[:, 2]) / 2).astype(np.int64), 0, valid.shape[1] - 1)
            cy = np.clip(((boxes[:, 1] + boxes[:, 3]) / 2).astype(np.int64), 0, valid.shape[0] - 1)
            on_data = valid[cy, cx]
            self.dropped["nodata"] += int((~on_data).sum())
            boxes, scores, labels = boxes[on_data], scores[on_data], labels[on_data]
        boxes = boxes + np.array([w.col_off, w.row_off] * 2, np.float64)
        # The scene ends where the tile is padded: boxes never reach past it.
        boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, self.width)
        boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, self.height)
        self.windows.append(w)
        self._boxes.append(boxes)
        self._scores.append(scores)
        self._labels.append(labels)
        self._tiles.append(np.full(len(boxes), len(self.windows) - 1, np.int64))

    def _truncated(self, boxes: np.ndarray, w: TileWindow) -> np.ndarray:
        m = self.edge_margin
        left, top, right, bottom = self.inner_edges(w)
        return ((left & (boxes[:, 0] <= w.col_off + m)) | (top & (boxes[:, 1] <= w.row_off + m))
                | (right & (boxes[:, 2] >= w.col_off + w.width - m))
                | (bottom & (boxes[:, 3] >= w.row_off + w.height - m)))

    def merged(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The scene's detections after the merge rule: boxes (N, 4) xyxy in scene pixels,
        scores (N,), labels (N,), highest score first."""
        if not self._boxes:
            return np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64)
        boxes, scores = np.concatenate(self._boxes), np.concatenate(self._scores)
        labels, tiles = np.concatenate(self._labels), np.concatenate(self._tiles)
        truncated = np.zeros(len(boxes), bool)
        for k, w in enumerate(self.windows):
            sel = tiles == k
            truncated[sel] = self._truncated(boxes[sel], w)
        drop = self._seen_whole(boxes, labels, tiles, truncated)
        self.dropped["truncated_seen_whole_elsewhere"] += int(drop.sum())
        keep = ~drop
        boxes, scores, labels, tiles, truncated = (a[keep] for a in (boxes, scores, labels, tiles, truncated))
        boxes, scores, labels = self._merge_truncated(boxes, scores, labels, tiles, truncated)
        keep = nms(boxes, scores, labels, self.nms_iou, cell=self._cell)
        self.dropped["duplicate"] += len(boxes) - len(keep)
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        order = np.lexsort((boxes[:, 0], boxes[:, 1], -scores))
        return boxes[order], scores[order], labels[order]

    @property
    def _cell(self) -> float:
        return float(max(self.tile, 1))

    def _seen_whole(self, boxes: np.ndarray, labels: np.ndarray, tiles: np.ndarray,
                    truncated: np.ndarray) -> np.ndarray:
        """Truncated detections that a whole (not truncated) same-class detection of another
        tile covers for at least half of their area: that tile saw the object whole."""
        whole = np.nonzero(~truncated)[0]
        grid = BoxGrid(boxes[whole], labels[whole], self._cell)
        drop = np.zeros(len(boxes), bool)
        for i in np.nonzero(truncated)[0]:
            near = whole[grid.near(boxes[i], int(labels[i]))]
            near = near[tiles[near] != tiles[i]]
            if len(near):
                drop[i] = bool((intersection(boxes[i], boxes[near]) >= 0.5 * area(boxes[i])).any())
        return drop

    def _merge_truncated(self, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                         tiles: np.ndarray, truncated: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Union overlapping truncated same-class detections of different tiles (pieces of an
        object that no tile saw whole) into one box with the highest score, repeatedly, so
        pieces of an object cut by several borders become one box."""
        boxes, scores = boxes.copy(), scores.copy()
        alive = np.ones(len(boxes), bool)
        pieces = np.nonzero(truncated)[0]
        changed = True
        while changed:
            changed = False
            for i in pieces:
                if not alive[i]:
                    continue
                others = pieces[alive[pieces] & (labels[pieces] == labels[i]) & (tiles[pieces] != tiles[i])]
                others = others[intersection(boxes[i], boxes[others]) > 0] if len(others) else others
                for j in others:
                    boxes[i, :2] = np.minimum(boxes[i, :2], boxes[j, :2])
                    boxes[i, 2:] = np.maximum(boxes[i, 2:], boxes[j, 2:])
                    scores[i] = max(scores[i], scores[j])
                    alive[j] = False
                    self.dropped["merged_truncated"] += 1
                    changed = True
        return boxes[alive], scores[alive], labels[alive]


# ---- output ------------------------------------------------------------------------------------
def box_polygon(box: Sequence[float], transform: Any) -> list[list[float]]:
    """A pixel box's footprint in map coordinates: its four corners through the affine
    ``transform`` (a parallelogram for rotated rasters), closed, counter-clockwise for north-up
    rasters (RFC 7946's winding for outer rings)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    corners = [(x0, y1), (x1, y1), (x1, y0), (x0, y0), (x0, y1)]
    out = []
    for col, row in corners:
        x, y = transform @ (col, row)
        out.append([x, y])
    return out


def crs_member(crs: Any) -> dict[str, Any] | None:
    """The legacy GeoJSON ``crs`` member naming ``crs`` (``EPSG:<code>`` when it has one, else
    its WKT), which GDAL/QGIS read; None without a CRS."""
    if crs is None:
        return None
    epsg = crs.to_epsg() if hasattr(crs, "to_epsg") else None
    name = f"urn:ogc:def:crs:EPSG::{epsg}" if epsg else crs.to_wkt()
    return {"type": "name", "properties": {"name": name}}


def _feature(ring: list[list[float]], props: dict[str, Any]) -> dict[str, Any]:
    return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]}, "properties": props}


def detection_rows(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                   class_names: Sequence[str]) -> list[dict[str, Any]]:
    """One property dict per detection: id, class, class_index, score and the pixel box."""
    rows = []
    for i, (b, s, k) in enumerate(zip(boxes, scores, labels, strict=True)):
        rows.append({"id": i, "class": str(class_names[int(k)]) if 0 <= int(k) < len(class_names) else str(int(k)),
                     "class_index": int(k), "score": round(float(s), 6),
                     "x0": round(float(b[0]), 3), "y0": round(float(b[1]), 3),
                     "x1": round(float(b[2]), 3), "y1": round(float(b[3]), 3)})
    return rows


def write_scene_detections(out: Path, stem: str, boxes: np.ndarray, scores: np.ndarray,
                           labels: np.ndarray, class_names: Sequence[str], transform: Any, crs: Any,
                           extra: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write the scene's detections; returns ``{"geojson", "geojson_wgs84", "csv"}`` paths.

    * ``<stem>_detections.geojson``: box polygons in the scene's own CRS and map units, with
      the legacy ``crs`` member naming it. QGIS/GDAL read the member, and the boxes stay exact
      rectangles of the raster's grid (no reprojection). Without a scene CRS the
      coordinates are the raster's map coordinates (pixel coordinates for ungeoreferenced
      rasters) and no member is written.
    * ``<stem>_detections_wgs84.geojson``: the same polygons reprojected to WGS84 lon/lat, the
      RFC 7946 form web tools expect (only when the scene has a CRS).
    * ``<stem>_detections.csv``: one row per detection with the pixel box (pixel-edge
      coordinates of the scene: x0, y0, x1, y1), the class and the score.

    Properties of every feature: id, class, class_index, score, x0, y0, x1, y1 (pixels).
    Each file is written under a temporary name and renamed when complete.
    """
    out.mkdir(parents=True, exist_ok=True)
    rows = detection_rows(boxes, scores, labels, class_names)
    rings = [box_polygon(b, transform) for b in boxes]
    member = crs_member(crs)
    native = {"type": "FeatureCollection", "name": f"{stem}_detections",
              **({"crs": member} if member else {}), **(extra or {}),
              "features": [_feature(r, p) for r, p in zip(rings, rows, strict=True)]}
    paths = {"geojson": out / SCENE_DETECTIONS.format(stem=stem), "csv": out / SCENE_DETECTIONS_CSV.format(stem=stem)}
    _write_json(paths["geojson"], native)
    if crs is not None:
        paths["geojson_wgs84"] = out / SCENE_DETECTIONS_WGS84.format(stem=stem)
        wgs = {"type": "FeatureCollection", "name": f"{stem}_detections_wgs84", **(extra or {}),
               "features": [_feature(r, p) for r, p in zip(to_wgs84(rings, crs), rows, strict=True)]}
        _write_json(paths["geojson_wgs84"], wgs)
    fields = ["id", "class", "class_index", "score", "x0", "y0", "x1", "y1"]

    def write_csv(tmp: Path) -> None:
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)

    write_atomic(paths["csv"], write_csv)
    return paths


def to_wgs84(rings: list[list[list[float]]], crs: Any) -> list[list[list[float]]]:
    """Rings reprojected from ``crs`` to WGS84 longitude, latitude (RFC 7946 axis order)."""
    if not rings:
        return []
    from rasterio.crs import CRS
    from rasterio.warp import transform as warp

    flat = np.asarray([p for r in rings for p in r], np.float64)
    lon, lat = warp(crs, CRS.from_epsg(4326), flat[:, 0].tolist(), flat[:, 1].tolist())
    it = iter(zip(lon, lat, strict=True))
    return [[[float(x), float(y)] for x, y in (next(it) for _ in r)] for r in rings]


def _write_json(path: Path, data: dict[str, Any]) -> None:
    def write(tmp: Path) -> None:
        tmp.write_text(json.dumps(data, allow_nan=False))
    write_atomic(path, write)

