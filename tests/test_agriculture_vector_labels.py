"""Scene-detection labels from GIS vector files other than GeoJSON (Shapefile, GeoPackage).

Fixtures are written with fiona, i.e. GDAL/OGR's drivers, the code QGIS and ogr2ogr write these
formats with: clockwise outer rings, 10-character Shapefile field names, integer class codes,
a ``.prj`` in ESRI WKT, GeoPackage layers with their own ``srs_id``.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from core.annotations import BadAnnotationPolicy
from core.errors import DataError
from domains.agriculture.detection import SceneDetectionDataModule
from domains.agriculture.detection_labels import read_geojson_objects
from domains.agriculture.raster import RasterStack

from .test_agriculture_detection import CRS, X0, Y0, dm_on, lonlat, map_corners, scene

fiona = pytest.importorskip("fiona", reason="fiona comes with the agriculture extra (make test installs it)")

BOXES = {"tree": (20, 10, 26, 16), "pond": (3, 30, 11, 35)}


def write_vector(path: Path, rings: list[tuple[list, object]], crs: str | None, driver: str,
                 field: str = "class", field_type: str = "str", layer: str | None = None) -> Path:
    """Polygons written by OGR (``rings``: (outer ring, class value) pairs)."""
    schema = {"geometry": "Polygon", "properties": {field: field_type, "note": "str"}}
    kwargs = {"layer": layer} if layer else {}
    with fiona.open(path, "w", driver=driver, schema=schema, crs=crs, **kwargs) as dst:
        for ring, value in rings:
            dst.write({"geometry": {"type": "Polygon", "coordinates": [[tuple(p) for p in ring]]},
                       "properties": {field: value, "note": "drawn in QGIS"}})
    return path


def utm_rings() -> list[tuple[list, str]]:
    return [(map_corners(b), c) for c, b in BOXES.items()]


def test_shapefile_in_the_scene_crs_gives_the_pixel_boxes_it_was_drawn_from(tmp_path):
    stack = RasterStack(str(scene(tmp_path)))
    shp = write_vector(tmp_path / "objects.shp", utm_rings(), CRS, "ESRI Shapefile")
    assert (tmp_path / "objects.prj").is_file()  # OGR writes the CRS as ESRI WKT
    found = read_geojson_objects(shp, stack, class_order=["tree", "pond"])
    np.testing.assert_allclose(found.boxes, [BOXES["tree"], BOXES["pond"]], atol=1e-6)
    assert found.labels.tolist() == [0, 1]
    # Any part of the Shapefile names it; a zipped Shapefile is read inside the archive.
    dbf = read_geojson_objects(tmp_path / "objects.dbf", stack, class_order=["tree", "pond"])
    np.testing.assert_array_equal(dbf.boxes, found.boxes)
    archive = tmp_path / "objects.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for part in ("shp", "shx", "dbf", "prj"):
            z.write(tmp_path / f"objects.{part}", f"objects.{part}")
    zipped = read_geojson_objects(archive, stack, class_order=["tree", "pond"])
    np.testing.assert_array_equal(zipped.boxes, found.boxes)


def test_lonlat_shapefile_with_integer_class_codes_is_reprojected(tmp_path):
    """A WGS84 Shapefile whose class field is an integer code (as many GIS exports are)."""
    stack = RasterStack(str(scene(tmp_path)))
    rings = [(lonlat(map_corners(BOXES["tree"])), 2), (lonlat(map_corners(BOXES["pond"])), 7)]
    shp = write_vector(tmp_path / "wgs.shp", rings, "EPSG:4326", "ESRI Shapefile",
                       field="landcover", field_type="int")
    found = read_geojson_objects(shp, stack, label_property="landcover")
    assert found.class_names == ["2", "7"]
    np.testing.assert_allclose(found.boxes, [BOXES["tree"], BOXES["pond"]], atol=1e-6)


def test_geopackage_layers_and_crs(tmp_path):
    """A GeoPackage with two layers in different CRSs: the layer must be named, and each is
    placed through its own CRS."""
    stack = RasterStack(str(scene(tmp_path)))
    gpkg = tmp_path / "survey.gpkg"
    write_vector(gpkg, utm_rings(), CRS, "GPKG", layer="trees_utm")
    lon = [(lonlat(map_corners(BOXES["pond"])), "pond")]
    write_vector(gpkg, lon, "EPSG:4326", "GPKG", layer="ponds_wgs84")
    with pytest.raises(DataError, match=r"hold 2 layers \((trees_utm, ponds_wgs84|ponds_wgs84, trees_utm)\).*objects_layer"):
        read_geojson_objects(gpkg, stack)
    with pytest.raises(DataError, match="no layer 'ponds'.*objects_layer"):
        read_geojson_objects(gpkg, stack, layer="ponds")
    ponds = read_geojson_objects(gpkg, stack, layer="ponds_wgs84")
    np.testing.assert_allclose(ponds.boxes, [BOXES["pond"]], atol=1e-6)
    trees = read_geojson_objects(gpkg, stack, class_order=["tree", "pond"], layer="trees_utm")
    np.testing.assert_allclose(trees.boxes, [BOXES["tree"], BOXES["pond"]], atol=1e-6)


def test_shapefile_without_prj_is_an_error_not_a_guess(tmp_path):
    stack = RasterStack(str(scene(tmp_path)))
    shp = write_vector(tmp_path / "noprj.shp", utm_rings(), None, "ESRI Shapefile")
    assert not (tmp_path / "noprj.prj").exists()
    with pytest.raises(DataError, match=r"noprj\.shp' have no CRS.*not necessarily the scene's.*"
                                        r"ogr2ogr -a_srs EPSG:<code> fixed\.gpkg .*noprj\.shp") as err:
        read_geojson_objects(shp, stack)
    assert "32633" not in str(err.value)  # the scene's CRS is not offered as the labels' CRS
    archive = tmp_path / "noprj.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for part in ("shp", "shx", "dbf"):
            z.write(tmp_path / f"noprj.{part}", f"noprj.{part}")
    with pytest.raises(DataError, match=r"-a_srs EPSG:<code> fixed\.gpkg /vsizip/.*noprj\.zip"):
        read_geojson_objects(archive, stack)


def test_a_truncated_field_name_and_all_features_skipped_say_why(tmp_path):
    """Shapefiles cut field names to 10 characters: 'crop_class_name' is stored as 'crop_class'."""
    stack = RasterStack(str(scene(tmp_path)))
    shp = write_vector(tmp_path / "fields.shp", utm_rings(), CRS, "ESRI Shapefile", field="crop_class_name")
    with pytest.raises(DataError, match=r"feature 0 .*has no 'crop_class_name' property .*did you mean "
                                        r"'crop_class'\?\); Shapefile field names are cut to 10 "
                                        r"characters.*leave the feature out"):
        read_geojson_objects(shp, stack, label_property="crop_class_name")
    skipped: list[tuple[str, str]] = []
    with pytest.raises(DataError, match=r"hold no usable object \(of 2 feature\(s\)\); all skipped, the "
                                        r"first because: .*feature 0 .*has no 'crop_class_name'"):
        read_geojson_objects(shp, stack, label_property="crop_class_name",
                             policy=BadAnnotationPolicy("skip", skipped))
    assert len(skipped) == 2


def test_missing_parts_and_bad_features_name_the_file(tmp_path):
    stack = RasterStack(str(scene(tmp_path)))
    (tmp_path / "lonely.dbf").write_bytes(b"\x03")
    with pytest.raises(DataError, match=r"lonely\.shp' is missing"):
        read_geojson_objects(tmp_path / "lonely.dbf", stack)
    with pytest.raises(DataError, match="do not exist"):
        read_geojson_objects(tmp_path / "absent.gpkg", stack)
    # A null shape (Shapefiles allow them) and a typo in a class follow on_bad_annotation.
    shp = tmp_path / "mixed.shp"
    schema = {"geometry": "Polygon", "properties": {"class": "str"}}
    with fiona.open(shp, "w", driver="ESRI Shapefile", schema=schema, crs=CRS) as dst:
        dst.write({"geometry": {"type": "Polygon", "coordinates": [map_corners(BOXES["tree"])]},
                   "properties": {"class": "tree"}})
        dst.write({"geometry": None, "properties": {"class": "tree"}})
        dst.write({"geometry": {"type": "Polygon", "coordinates": [map_corners(BOXES["pond"])]},
                   "properties": {"class": "pnod"}})
    with pytest.raises(DataError, match="feature 1 .*no geometry"):
        read_geojson_objects(shp, stack, class_order=["tree", "pond"])
    skipped: list[tuple[str, str]] = []
    found = read_geojson_objects(shp, stack, class_order=["tree", "pond"],
                                 policy=BadAnnotationPolicy("skip", skipped))
    np.testing.assert_allclose(found.boxes, [BOXES["tree"]], atol=1e-6)
    np.testing.assert_allclose(found.ignored, [BOXES["pond"]], atol=1e-6)  # its place is known
    assert [r.split(" ", 3)[2:3] for _, r in skipped] == [["feature"], ["feature"]]
    assert "did you mean 'pond'" in skipped[1][1]


def test_datamodule_reads_a_geopackage_layer(tmp_path):
    image = scene(tmp_path, width=128, height=128)
    gpkg = write_vector(tmp_path / "o.gpkg", utm_rings(), CRS, "GPKG", layer="objects")
    dm = dm_on(tmp_path, image, gpkg, objects_layer="objects", class_labels=["tree", "pond"])
    found = dm.read_objects(RasterStack(str(image)))
    np.testing.assert_allclose(found.boxes, [BOXES["tree"], BOXES["pond"]], atol=1e-6)
    with pytest.raises(DataError, match="objects_layer names a layer"):
        SceneDetectionDataModule(image=str(image), objects_mask=str(image), objects_layer="objects")


def test_points_layer_with_buffer(tmp_path):
    """Tree positions digitised as points: a 15 m radius around (X0 + 35, Y0 - 205) is the pixel
    box (2, 19, 5, 22) on the 10 m grid."""
    stack = RasterStack(str(scene(tmp_path)))
    path = tmp_path / "trees.gpkg"
    with fiona.open(path, "w", driver="GPKG", crs=CRS,
                    schema={"geometry": "Point", "properties": {"class": "str"}}) as dst:
        dst.write({"geometry": {"type": "Point", "coordinates": (X0 + 35, Y0 - 205)},
                   "properties": {"class": "tree"}})
    found = read_geojson_objects(path, stack, point_buffer=15.0)
    np.testing.assert_allclose(found.boxes, [[2, 19, 5, 22]], atol=1e-6)
