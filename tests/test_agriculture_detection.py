"""Object detection over GeoTIFF scenes: GeoJSON/mask objects -> tile boxes, tile detections ->
one scene box per object, GeoJSON/CSV in the scene's CRS and WGS84, the config through the CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.transform import from_origin
from rasterio.warp import transform as warp

from core.annotations import BadAnnotationPolicy
from core.errors import DataError
from domains.agriculture.detection import SceneDetectionDataModule, clip_boxes
from domains.agriculture.detection_labels import read_geojson_objects, read_mask_objects
from domains.agriculture.plugin import GEOTIFF_SCENE
from domains.agriculture.raster import RasterStack
from domains.agriculture.scene import grid_windows
from domains.agriculture.scene_detection import SceneDetections, nms, write_scene_detections
from domains.agriculture.synthetic_detection import write_detection_scene

from .conftest import TINY_ARGS

ROOT = Path(__file__).resolve().parents[1]
CRS = "EPSG:32633"
# Column 20 is easting 500 000 (UTM 33N's central meridian, longitude 15° exactly); 10 m pixels.
X0, Y0, PX = 499_800.0, 5_000_300.0, 10.0
UTM = from_origin(X0, Y0, PX, PX)


def write_raster(path: Path, image: np.ndarray, transform=UTM, crs: str | None = CRS,
                 nodata: float | None = None) -> Path:
    """A GeoTIFF as GIS tools write it: integer bands, no nodata tag unless given."""
    profile = {"driver": "GTiff", "width": image.shape[-1], "height": image.shape[-2],
               "count": image.shape[0], "dtype": image.dtype.name}
    if crs is not None:
        profile.update(crs=crs, transform=transform)
    if nodata is not None:
        profile["nodata"] = nodata
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(image)
    return path


def scene(tmp_path: Path, width: int = 64, height: int = 48, transform=UTM, name: str = "scene.tif") -> Path:
    rng = np.random.default_rng(0)
    image = rng.integers(100, 3000, (3, height, width)).astype(np.uint16)
    return write_raster(tmp_path / name, image, transform)


def map_corners(box, transform=UTM) -> list[tuple[float, float]]:
    """A pixel box's corners in map coordinates (closed ring), as a GIS would digitise it."""
    x0, y0, x1, y1 = box
    return [transform @ c for c in [(x0, y1), (x1, y1), (x1, y0), (x0, y0), (x0, y1)]]


def polygon(ring, cls: str, **extra) -> dict:
    return {"type": "Feature", "properties": {"class": cls, **extra},
            "geometry": {"type": "Polygon", "coordinates": [[list(p) for p in ring]]}}


def lonlat(ring) -> list[tuple[float, float]]:
    xs, ys = zip(*ring, strict=True)
    lon, lat = warp(CRS, "EPSG:4326", list(xs), list(ys))
    return list(zip(lon, lat, strict=True))


def write_geojson(path: Path, features: list[dict], crs: str | None = None) -> Path:
    data = {"type": "FeatureCollection", "features": features}
    if crs is not None:
        data["crs"] = {"type": "name", "properties": {"name": crs}}
    path.write_text(json.dumps(data))
    return path


# ---- labels ------------------------------------------------------------------------------------
def test_lonlat_geojson_gives_the_hand_computed_pixel_boxes(tmp_path):
    """RFC 7946 lon/lat polygons (QGIS/geopandas' default export) are reprojected to the UTM
    scene: the boxes are the pixel rectangles they were drawn from."""
    stack = RasterStack(str(scene(tmp_path)))
    boxes = {"tree": (20, 10, 26, 16), "pond": (3, 30, 11, 35)}
    features = [polygon(lonlat(map_corners(b)), c) for c, b in boxes.items()]
    # A point 35 m east and 205 m south of the origin is pixel (3.5, 20.5); a 15 m radius is 1.5 px.
    features.append({"type": "Feature", "properties": {"class": "tree"},
                     "geometry": {"type": "Point", "coordinates": list(lonlat([(X0 + 35, Y0 - 205)])[0])}})
    found = read_geojson_objects(write_geojson(tmp_path / "o.geojson", features), stack,
                                 class_order=["tree", "pond"], point_buffer=15.0)
    assert found.class_names == ["tree", "pond"]
    np.testing.assert_allclose(found.boxes, [[20, 10, 26, 16], [3, 30, 11, 35], [2, 19, 5, 22]], atol=1e-6)
    assert found.labels.tolist() == [0, 1, 0]


def test_legacy_crs_member_in_the_scene_crs_is_used_without_reprojection(tmp_path):
    stack = RasterStack(str(scene(tmp_path)))
    path = write_geojson(tmp_path / "o.geojson", [polygon(map_corners((20, 10, 26, 16)), 3.0)],
                         crs="urn:ogc:def:crs:EPSG::32633")
    found = read_geojson_objects(path, stack, label_property="class")
    np.testing.assert_array_equal(found.boxes, [[20, 10, 26, 16]])
    assert found.class_names == ["3"]  # numeric codes exported as floats stay one class name


def test_rotated_south_up_transform(tmp_path):
    """A rotated raster whose rows run north (positive y step): polygons still give the pixel
    rectangle they were drawn from."""
    transform = Affine.translation(X0, Y0) @ Affine.rotation(30) @ Affine.scale(PX, PX)
    stack = RasterStack(str(scene(tmp_path, transform=transform)))
    path = write_geojson(tmp_path / "o.geojson", [polygon(map_corners((5, 7, 12, 20), transform), "tree")],
                         crs="EPSG:32633")
    found = read_geojson_objects(path, stack)
    np.testing.assert_allclose(found.boxes, [[5, 7, 12, 20]], atol=1e-6)


def test_objects_outside_or_across_the_scene_edge(tmp_path, caplog):
    stack = RasterStack(str(scene(tmp_path)))
    features = [polygon(map_corners((-10, -10, -2, -2)), "tree"),   # wholly outside
                polygon(map_corners((60, 40, 70, 52)), "tree"),      # reaches past the corner
                polygon(map_corners((1, 1, 4, 4)), "tree")]
    found = read_geojson_objects(write_geojson(tmp_path / "o.geojson", features, CRS), stack)
    np.testing.assert_array_equal(found.boxes, [[60, 40, 64, 48], [1, 1, 4, 4]])
    np.testing.assert_array_equal(found.areas, [120, 9])  # the whole object, for the border rule
    assert "1 object(s)" in found.notes[0] and "feature 0" in found.notes[0]


def test_bad_features_error_or_skip(tmp_path):
    stack = RasterStack(str(scene(tmp_path)))
    good = polygon(map_corners((1, 1, 4, 4)), "tree")
    typo = polygon(map_corners((5, 5, 9, 9)), "tre")
    line = {"type": "Feature", "properties": {"class": "tree"},
            "geometry": {"type": "LineString", "coordinates": [[X0, Y0], [X0 + 50, Y0 - 50]]}}
    null = {"type": "Feature", "properties": {"class": "tree"}, "geometry": None}
    flat = polygon([(X0, Y0), (X0 + 10, Y0), (X0 + 20, Y0), (X0, Y0)], "tree")
    point = {"type": "Feature", "properties": {"class": "tree"},
             "geometry": {"type": "Point", "coordinates": [X0 + 5, Y0 - 5]}}
    nan = polygon([(X0, Y0), (float("nan"), Y0), (X0, Y0 - 10), (X0, Y0)], "tree")
    path = write_geojson(tmp_path / "o.geojson", [good, typo, line, null, flat, point, nan], CRS)
    with pytest.raises(DataError, match=r"feature 1 class 'tre' is not in class_labels .*did you mean 'tree'"):
        read_geojson_objects(path, stack, class_order=["tree", "pond"])
    skipped: list[tuple[str, str]] = []
    found = read_geojson_objects(path, stack, class_order=["tree", "pond"],
                                 policy=BadAnnotationPolicy("skip", skipped))
    np.testing.assert_array_equal(found.boxes, [[1, 1, 4, 4]])
    np.testing.assert_array_equal(found.ignored, [[5, 5, 9, 9]])  # the typo's place is known
    reasons = [r for _, r in skipped]
    assert len(reasons) == 6 and all(p == str(path) for p, _ in skipped)
    for k, words in zip(range(1, 7), ["did you mean", "LineString", "no geometry", "zero area",
                                      "point_buffer", "non-number"], strict=True):
        assert f"feature {k}" in reasons[k - 1] and words in reasons[k - 1]


def test_unreadable_label_files_are_one_clear_error(tmp_path):
    stack = RasterStack(str(scene(tmp_path)))
    shp = tmp_path / "o.shp"
    shp.write_bytes(b"\0" * 100)
    with pytest.raises(DataError, match=r"o\.shp' are not a vector file GDAL can read"):
        read_geojson_objects(shp, stack)
    bad_crs = tmp_path / "c.geojson"
    bad_crs.write_text(json.dumps({"type": "FeatureCollection", "features": [],
                                   "crs": {"type": "name", "properties": {"name": "EPSG:999999"}}}))
    with pytest.raises(DataError, match="not a known CRS"):
        read_geojson_objects(bad_crs, stack)
    (tmp_path / "t.geojson").write_text("{not json")
    with pytest.raises(DataError, match="not valid GeoJSON"):
        read_geojson_objects(tmp_path / "t.geojson", stack)


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")  # written so on purpose
def test_ungeoreferenced_mask_of_the_scene_size_is_used_with_a_note(tmp_path):
    stack = RasterStack(str(scene(tmp_path)))
    mask = np.zeros((1, 48, 64), np.uint8)
    mask[0, 10:16, 20:26] = 2          # class 2 (pond)
    mask[0, 30:33, 3:11] = 1           # class 1 (tree)
    mask[0, 40, 40] = 1                # a speckle under min_area
    path = write_raster(tmp_path / "mask.tif", mask, crs=None)  # as image tools save masks
    found = read_mask_objects(path, stack, "class", [1, 2], ["tree", "pond"], min_area=4)
    order = np.argsort(found.boxes[:, 1])
    np.testing.assert_array_equal(found.boxes[order], [[20, 10, 26, 16], [3, 30, 11, 33]])
    assert found.labels[order].tolist() == [1, 0]
    assert any("no georeferencing" in n for n in found.notes)
    assert any("fewer than 4 pixels" in n for n in found.notes)
    small = write_raster(tmp_path / "small.tif", mask[:, :40, :40], crs=None)
    with pytest.raises(DataError, match="size differs"):
        read_mask_objects(small, stack)


def test_instance_mask_keeps_touching_objects_apart(tmp_path):
    stack = RasterStack(str(scene(tmp_path)))
    mask = np.zeros((1, 48, 64), np.uint16)
    mask[0, 5:10, 5:10] = 5
    mask[0, 5:10, 10:14] = 7           # touches instance 5
    found = read_mask_objects(write_raster(tmp_path / "inst.tif", mask), stack, "instance")
    np.testing.assert_array_equal(found.boxes, [[5, 5, 10, 10], [10, 5, 14, 10]])
    assert found.class_names == ["object"]
    binary = read_mask_objects(tmp_path / "inst.tif", stack, "class")  # one component when binary
    np.testing.assert_array_equal(binary.boxes, [[5, 5, 14, 10]])


# ---- tiles -----------------------------------------------------------------------------------
def test_border_rule_keeps_the_clipped_box_when_enough_is_inside():
    from rasterio.windows import Window

    boxes = np.array([[12, 4, 20, 8], [14, 20, 20, 24]], np.float64)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    left, keep = clip_boxes(boxes, areas, Window(0, 0, 16, 32), 0.5)
    np.testing.assert_array_equal(left, [[12, 4, 16, 8]])      # half inside: kept
    assert keep.tolist() == [0]                                   # a third inside: left out
    right, keep = clip_boxes(boxes, areas, Window(16, 0, 16, 32), 0.5)
    np.testing.assert_array_equal(right, [[16, 4, 20, 8], [16, 20, 20, 24]])
    assert keep.tolist() == [0, 1]


def dm_on(tmp_path, image: Path, objects: Path, **kw) -> SceneDetectionDataModule:
    args = {"image": str(image), "objects": str(objects), "tile_size": 16, "block_size": 32,
            "predict_overlap": 4, "batch_size": 4, "num_workers": 0} | kw
    dm = SceneDetectionDataModule(**args)
    dm.setup("fit")
    return dm


def test_tiles_get_clipped_boxes_in_tile_pixels_and_nodata_tiles_are_skipped(tmp_path):
    image = np.random.default_rng(1).integers(100, 3000, (3, 64, 64)).astype(np.uint16)
    image[:, 32:, 32:] = 0                       # a nodata block (no nodata tag: `nodata: 0`)
    path = write_raster(tmp_path / "scene.tif", image)
    objects = write_geojson(tmp_path / "o.geojson", [
        polygon(map_corners((12, 4, 20, 8)), "tree"),      # cut by the tile border at column 16
        polygon(map_corners((14, 20, 20, 24)), "pond"),    # a third left of it
    ], CRS)
    dm = dm_on(tmp_path, path, objects, nodata=0, class_labels=["tree", "pond"])
    src = dm.source
    assert src.nodata_tiles == 4 and len(src) == 12      # 16 tiles, the 4 of the nodata block left out
    by_id = dict(zip(src.ids, range(len(src)), strict=True))
    np.testing.assert_array_equal(src.boxes[by_id["r0_c0"]], [[12, 4, 16, 8]])
    np.testing.assert_array_equal(src.boxes[by_id["r0_c16"]], [[0, 4, 4, 8]])
    np.testing.assert_array_equal(src.boxes[by_id["r16_c0"]], np.zeros((0, 4)))
    np.testing.assert_array_equal(src.boxes[by_id["r16_c16"]], [[0, 4, 4, 8]])
    assert src.box_labels[by_id["r16_c16"]].tolist() == [1]
    batch = next(iter(dm.val_dataloader() if len(dm.splits["val"]) else dm.train_dataloader()))
    assert batch["image"].shape[1:] == (3, 16, 16) and isinstance(batch["boxes"], list)
    assert np.isfinite(batch["image"].numpy()).all()     # nodata filled (0 after normalisation)


def test_tiles_over_a_skipped_object_are_left_out(tmp_path):
    """Under ``skip`` an object with a bad class must not train as background in its tiles."""
    path = write_raster(tmp_path / "scene.tif",
                        np.random.default_rng(2).integers(100, 3000, (3, 64, 64)).astype(np.uint16))
    objects = write_geojson(tmp_path / "o.geojson", [polygon(map_corners((1, 1, 4, 4)), "tree"),
                                                     polygon(map_corners((40, 40, 44, 44)), "tre")], CRS)
    with pytest.raises(DataError, match="did you mean 'tree'"):
        dm_on(tmp_path, path, objects, class_labels=["tree"])
    dm = dm_on(tmp_path, path, objects, class_labels=["tree"], on_bad_annotation="skip")
    assert dm.source.ignored_tiles == 1 and "r32_c32" not in dm.source.ids and len(dm.source) == 15
    assert len(dm.skipped) == 1 and "feature 1" in dm.skipped[0][1]


def test_splits_never_share_pixels(tmp_path):
    paths = write_detection_scene(tmp_path / "d", 96, 96, objects=14)
    dm = dm_on(tmp_path, paths["scene"], paths["geojson"], tile_overlap=6, block_size=32,
               val_fraction=0.25, test_fraction=0.25)
    src = dm.source
    split_of = {int(i): s for s, idx in dm.splits.items() for i in idx}
    for a in range(len(src)):
        for b in range(a + 1, len(src)):
            if split_of[a] == split_of[b]:
                continue
            wa, wb = src.windows[a], src.windows[b]
            apart = (wa.col_off + 16 <= wb.col_off or wb.col_off + 16 <= wa.col_off
                     or wa.row_off + 16 <= wb.row_off or wb.row_off + 16 <= wa.row_off)
            assert apart, (src.ids[a], src.ids[b])
    assert dm.train_boxes().shape[1] == 4 and sum(dm.train_class_counts()) == len(dm.train_boxes())


# ---- merging tile detections --------------------------------------------------------------------
def scene_of(width: int, height: int, tile: int, overlap: int, **kw) -> tuple[SceneDetections, list]:
    return SceneDetections(width, height, tile, **kw), grid_windows(width, height, tile, overlap)


def local(box, window) -> np.ndarray:
    return np.array([[box[0] - window.col_off, box[1] - window.row_off,
                      box[2] - window.col_off, box[3] - window.row_off]], np.float64)


def test_an_object_cut_by_a_tile_border_gives_one_whole_box():
    merged, windows = scene_of(64, 32, 32, 8, score_threshold=0.3)
    assert [int(w.col_off) for w in windows] == [0, 24, 32]
    obj = (28, 10, 36, 18)  # crosses column 32, the right edge of tile 0 and left edge of tile 32
    seen = {0: ((28, 10, 32, 18), 0.9), 24: (obj, 0.8), 32: ((32, 10, 36, 18), 0.7)}
    for w in windows:
        box, score = seen[int(w.col_off)]
        merged.add(w, local(box, w), [score], [1])
    boxes, scores, labels = merged.merged()
    np.testing.assert_array_equal(boxes, [obj])  # the tile that saw it whole wins
    assert scores.tolist() == [0.8] and labels.tolist() == [1]
    assert merged.dropped["truncated_seen_whole_elsewhere"] == 2


def test_duplicates_of_whole_objects_in_overlapping_tiles_are_suppressed():
    merged, windows = scene_of(64, 32, 32, 8)
    obj = (27, 3, 29, 8)  # inside tiles 0 and 24, clear of their inner edges
    for w, score in zip(windows[:2], (0.6, 0.9), strict=True):
        merged.add(w, local(obj, w) + 0.25 * (score == 0.6), [score], [0])
    boxes, scores, _ = merged.merged()
    np.testing.assert_array_equal(boxes, [obj])
    assert scores.tolist() == [0.9] and merged.dropped["duplicate"] == 1


def test_an_object_larger_than_the_overlap_is_merged_into_one_box():
    merged, windows = scene_of(64, 32, 32, 8, score_threshold=0.1)
    obj = (20, 5, 44, 25)  # 24 px wide: no tile sees it whole
    for w, score in zip(windows, (0.5, 0.7, 0.6), strict=True):
        x0, x1 = max(obj[0], w.col_off), min(obj[2], w.col_off + 32)
        merged.add(w, local((x0, obj[1], x1, obj[3]), w), [score], [0])
    boxes, scores, _ = merged.merged()
    np.testing.assert_array_equal(boxes, [obj])
    assert scores.tolist() == [0.7]


def test_detections_below_the_threshold_or_on_nodata_are_dropped():
    merged, windows = scene_of(32, 32, 32, 0, score_threshold=0.5)
    valid = np.ones((32, 32), bool)
    valid[:, 20:] = False                      # the right part of the tile is nodata
    merged.add(windows[0], [[2, 2, 6, 6], [22, 2, 28, 6], [8, 8, 12, 12]], [0.9, 0.95, 0.49], [0, 0, 0], valid)
    boxes, _, _ = merged.merged()
    np.testing.assert_array_equal(boxes, [[2, 2, 6, 6]])
    assert merged.dropped["nodata"] == 1 and merged.dropped["below_threshold"] == 1


def test_nms_is_class_wise():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [0, 0, 10, 10]], float)
    assert nms(boxes, np.array([0.9, 0.8, 0.7]), np.array([0, 0, 1]), 0.5).tolist() == [0, 2]


# ---- output ----------------------------------------------------------------------------------
def test_geojson_coordinates_are_the_map_position_of_the_pixel_box(tmp_path):
    paths = write_scene_detections(tmp_path / "out", "scene", np.array([[20.0, 10.0, 26.0, 16.0]]),
                                   np.array([0.875]), np.array([1]), ["tree", "pond"], UTM,
                                   rasterio.crs.CRS.from_string(CRS))
    native = json.loads(paths["geojson"].read_text())
    assert native["crs"] == {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32633"}}
    feature = native["features"][0]
    # columns 20..26 -> eastings 500 000..500 060; rows 10..16 -> northings 5 000 200..5 000 140
    assert feature["geometry"]["coordinates"] == [[[500000.0, 5000140.0], [500060.0, 5000140.0],
                                                   [500060.0, 5000200.0], [500000.0, 5000200.0],
                                                   [500000.0, 5000140.0]]]
    assert feature["properties"] == {"id": 0, "class": "pond", "class_index": 1, "score": 0.875,
                                      "x0": 20.0, "y0": 10.0, "x1": 26.0, "y1": 16.0}
    wgs = json.loads(paths["geojson_wgs84"].read_text())
    assert "crs" not in wgs  # RFC 7946: lon/lat WGS84, no crs member
    ring = np.array(wgs["features"][0]["geometry"]["coordinates"][0])
    assert abs(ring[0, 0] - 15.0) < 1e-9  # easting 500 000 is the zone's central meridian, 15°E
    lon, lat = warp(CRS, "EPSG:4326", [500060.0], [5000200.0])
    assert abs(ring[2, 0] - lon[0]) < 1e-6 and abs(ring[2, 1] - lat[0]) < 1e-6
    assert 45.1 < ring[0, 1] < 45.2  # 5 000 km north of the equator
    with paths["csv"].open() as f:
        rows = list(csv.DictReader(f))
    assert rows == [{"id": "0", "class": "pond", "class_index": "1", "score": "0.875", "x0": "20.0",
                     "y0": "10.0", "x1": "26.0", "y1": "16.0"}]
    assert not list((tmp_path / "out").glob(".*partial*"))


def test_ungeoreferenced_scene_writes_pixel_coordinates_only(tmp_path):
    paths = write_scene_detections(tmp_path, "s", np.array([[1.0, 2.0, 3.0, 4.0]]), np.array([0.5]),
                                   np.array([0]), ["a"], Affine.identity(), None)
    native = json.loads(paths["geojson"].read_text())
    assert "crs" not in native and "geojson_wgs84" not in paths
    assert native["features"][0]["geometry"]["coordinates"][0][0] == [1.0, 4.0]


# ---- torch-free bundle path --------------------------------------------------------------------
def threshold_detector(channel: int, level: float):
    """A stand-in network: boxes of the connected bright regions of one normalised channel."""
    from core.instance_masks import mask_components

    def detect(x: np.ndarray):
        found = mask_components((x[channel] > level).astype(np.uint8), min_area=2)
        return found.boxes, np.full(len(found.boxes), 0.9), np.zeros(len(found.boxes), np.int64)
    return detect


def test_detect_scene_writes_one_box_per_object_of_a_scene(tmp_path):
    image = np.full((3, 40, 72), 1000, np.uint16)
    objects = [(5, 5, 10, 9), (29, 20, 35, 26), (60, 30, 66, 36)]  # the second crosses tile borders
    for x0, y0, x1, y1 in objects:
        image[2, y0:y1, x0:x1] = 5000
    path = write_raster(tmp_path / "field.tif", image)
    contract = GEOTIFF_SCENE.contract(in_chans=3, image_size=32, mean=[1000.0] * 3, std=[100.0] * 3,
                                      class_names=["tree"], bands=["B1", "B2", "B3"], band_selection=None,
                                      file_band_count=3, bands_named_by_position=True,
                                      channel_names=["B1", "B2", "B3"], predict_overlap=12)
    bundle = SimpleNamespace(contract=contract, meta={"class_names": ["tree"]})
    out = GEOTIFF_SCENE.detect_scene(bundle, path, tmp_path / "pred", threshold_detector(2, 5.0), 0.5)
    rows = list(csv.DictReader(out["csv"].open()))
    got = sorted((float(r["x0"]), float(r["y0"]), float(r["x1"]), float(r["y1"])) for r in rows)
    assert got == sorted(objects)
    native = json.loads(out["geojson"].read_text())
    assert native["crs"]["properties"]["name"].endswith("32633") and len(native["features"]) == 3


def test_detect_scene_merges_with_the_settings_the_bundle_stored(tmp_path, monkeypatch):
    """A bundle's detection.tile_merge (the training datamodule's nms_iou / edge_margin, stored
    at export) reaches the merge; a bundle without it merges with the defaults."""
    from core.export_detection import detection_info
    from domains.agriculture import scene_detection

    class Task:  # what detection_info reads of a task
        kind = "fcos"
        hparams = SimpleNamespace(score_thresh=0.05, detections_per_img=100)
        detector = SimpleNamespace(nms_thresh=0.6)

    monkeypatch.setattr("core.export_detection.output_names", lambda task: ["boxes", "scores", "labels"])
    stored = detection_info(Task(), {"nms_iou": 0.3, "edge_margin": 4, "tile_size": 32})
    assert stored["tile_merge"] == {"nms_iou": 0.3, "edge_margin": 4.0}
    assert detection_info(Task(), {"tile_size": 32})["tile_merge"] is None

    seen = []
    real = scene_detection.SceneDetections

    def spy(*args, **kwargs):
        merger = real(*args, **kwargs)
        seen.append((merger.nms_iou, merger.edge_margin))
        return merger

    monkeypatch.setattr(scene_detection, "SceneDetections", spy)
    image = np.full((3, 40, 40), 1000, np.uint16)
    path = write_raster(tmp_path / "field.tif", image)
    contract = GEOTIFF_SCENE.contract(in_chans=3, image_size=32, mean=[1000.0] * 3, std=[100.0] * 3,
                                      class_names=["tree"], bands=["B1", "B2", "B3"], band_selection=None,
                                      file_band_count=3, bands_named_by_position=True,
                                      channel_names=["B1", "B2", "B3"], predict_overlap=8)
    for meta in ({"class_names": ["tree"], "detection": stored}, {"class_names": ["tree"]}):
        bundle = SimpleNamespace(contract=contract, meta=meta)
        GEOTIFF_SCENE.detect_scene(bundle, path, tmp_path / "pred", threshold_detector(2, 5.0), 0.5)
    assert seen == [(0.3, 4.0), (0.5, 2.0)]


# ---- the config through the CLI ----------------------------------------------------------------
def detection_scene_data(tmp_path, monkeypatch) -> list[str]:
    """A 96x96 four-band UTM scene with lon/lat GeoJSON objects, cut into 32-pixel tiles (the
    synthetic data of configs/agriculture/detection.yaml)."""
    paths = write_detection_scene(tmp_path / "agri_det", 96, 96, objects=14)
    return [f"--data.init_args.image={paths['scene']}", f"--data.init_args.objects={paths['geojson']}",
            "--data.init_args.tile_size=32", "--data.init_args.tile_overlap=0",
            "--data.init_args.block_size=32", "--data.init_args.predict_overlap=8",
            "--model.init_args.fpn_channels=32"]


def test_config_fast_dev_run_then_predict_writes_geojson(tmp_path, monkeypatch):
    from core.cli import run_cli

    monkeypatch.chdir(tmp_path)
    config = ROOT / "configs" / "agriculture" / "detection.yaml"
    base = ["--config", str(config), *TINY_ARGS, "--data.init_args.num_workers=0",
            "--data.init_args.batch_size=4", f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
            *detection_scene_data(tmp_path, monkeypatch)]
    fit = run_cli(["fit", *base, "--trainer.fast_dev_run=true"])
    assert fit.trainer.state.finished and fit.trainer.global_step == 1
    assert fit.model.hparams.class_names == ["tree", "pond"] and fit.model.hparams.in_chans == 5
    scene_path = tmp_path / "agri_det" / "scene.tif"
    out = tmp_path / "pred"
    run_cli(["predict", *base, f"--data.init_args.predict_image={scene_path}",
             f"--data.init_args.predict_output={out}", "--data.init_args.score_threshold=0.0"])
    native = json.loads((out / "scene_detections.geojson").read_text())
    assert native["type"] == "FeatureCollection" and native["crs"]["properties"]["name"].endswith("32633")
    wgs = json.loads((out / "scene_detections_wgs84.geojson").read_text())
    assert len(wgs["features"]) == len(native["features"])
    with rasterio.open(scene_path) as ds:
        bounds = ds.bounds
    for f in native["features"]:
        xy = np.array(f["geometry"]["coordinates"][0])
        assert (xy[:, 0] >= bounds.left - 1e-6).all() and (xy[:, 0] <= bounds.right + 1e-6).all()
        assert (xy[:, 1] >= bounds.bottom - 1e-6).all() and (xy[:, 1] <= bounds.top + 1e-6).all()
    header = (out / "scene_detections.csv").read_text().splitlines()[0]
    assert header == "id,class,class_index,score,x0,y0,x1,y1"


def test_options_of_the_other_label_source_are_refused(tmp_path):
    with pytest.raises(DataError, match="exactly one of objects"):
        SceneDetectionDataModule(image="s.tif")
    with pytest.raises(DataError, match="remove class_values"):
        SceneDetectionDataModule(image="s.tif", objects="o.geojson", class_values=[1, 2])
    with pytest.raises(DataError, match="remove it for objects_mask"):
        SceneDetectionDataModule(image="s.tif", objects_mask="m.tif", point_buffer=3.0)
    with pytest.raises(DataError, match="tile_overlap 64 must be"):
        SceneDetectionDataModule(image="s.tif", objects="o.geojson", tile_size=64, tile_overlap=64)
