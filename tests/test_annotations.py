"""Annotation formats as other tools write them (CVAT/labelme COCO, YOLO with classes.txt or
data.yaml, LabelImg VOC, masks): parsed boxes in stored-image pixels, and every kind of bad
annotation as a named error or a reported skip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.annotation_formats import AnnotationError
from core.annotations import (
    AnnotationOptions,
    BadAnnotationPolicy,
    detect_format,
    read_annotations,
)
from core.errors import DataError
from core.instance_masks import mask_components, polygon_mask, rle_mask


def write_image(path: Path, width: int, height: int, mode: str = "RGB", value: int = 90) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    array = np.full((height, width, channels), value, np.uint8)
    Image.fromarray(array[:, :, 0] if channels == 1 else array, mode=mode).save(path)
    return path


def read(path, fmt="auto", on_bad="error", **options):
    skipped: list[tuple[str, str]] = []
    found = read_annotations(path, fmt, AnnotationOptions(**options), BadAnnotationPolicy(on_bad, skipped))
    return found, skipped


def by_name(found) -> dict[str, tuple[np.ndarray, tuple[str, ...]]]:
    return {Path(a.path).name: (a.boxes, a.labels) for a in found.images}


# ---- COCO, as CVAT / labelme2coco write it -----------------------------------------------------
def coco_dataset(root: Path, annotations: list[dict] | None = None, images: list[dict] | None = None) -> Path:
    """``annotations/instances_default.json`` beside ``images/`` (CVAT's export layout);
    category ids start at 1 and skip 2..3; c.png has no annotations (a negative)."""
    write_image(root / "images" / "a.png", 60, 40)
    write_image(root / "images" / "b.png", 50, 30, mode="RGBA")
    write_image(root / "images" / "c.png", 60, 40, mode="L")
    data = {
        "licenses": [{"name": "", "id": 0, "url": ""}],
        "info": {"contributor": "", "date_created": "", "description": "", "version": "", "year": ""},
        "categories": [{"id": 1, "name": "scratch", "supercategory": ""},
                       {"id": 4, "name": "dent", "supercategory": ""}],
        "images": images or [
            {"id": 1, "width": 60, "height": 40, "file_name": "a.png", "license": 0, "date_captured": 0},
            {"id": 2, "width": 50, "height": 30, "file_name": "b.png", "license": 0, "date_captured": 0},
            {"id": 3, "width": 60, "height": 40, "file_name": "c.png", "license": 0, "date_captured": 0},
        ],
        "annotations": annotations if annotations is not None else [
            {"id": 1, "image_id": 1, "category_id": 1, "segmentation": [[10.5, 5.25, 30.5, 5.25, 30.5, 15.25, 10.5, 15.25]],
             "area": 200.0, "bbox": [10.5, 5.25, 20.0, 10.0], "iscrowd": 0, "attributes": {"occluded": False}},
            {"id": 2, "image_id": 1, "category_id": 4, "segmentation": [[40.0, 20.0, 55.0, 20.0, 55.0, 38.0]],
             "area": 135.0, "bbox": [40.0, 20.0, 15.0, 18.0], "iscrowd": 0, "attributes": {"occluded": False}},
            {"id": 3, "image_id": 2, "category_id": 4, "segmentation": [[0, 0, 12, 0, 12, 9, 0, 9]],
             "area": 108.0, "bbox": [0.0, 0.0, 12.0, 9.0], "iscrowd": 0, "attributes": {"occluded": False}},
            {"id": 4, "image_id": 2, "category_id": 1,
             "segmentation": {"counts": [30 * 20, 30 * 10, 30 * 20], "size": [30, 50]},
             "area": 300.0, "bbox": [20.0, 0.0, 10.0, 30.0], "iscrowd": 1, "attributes": {}},
        ],
    }
    path = root / "annotations" / "instances_default.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))
    return path


def test_coco_boxes_are_xywh_converted_in_stored_pixels_and_categories_in_id_order(tmp_path, caplog):
    found, skipped = read(coco_dataset(tmp_path))
    assert found.class_names == ["scratch", "dent"]  # ids 1 and 4, in id order
    boxes = by_name(found)
    np.testing.assert_allclose(boxes["a.png"][0], [[10.5, 5.25, 30.5, 15.25], [40, 20, 55, 38]])
    assert boxes["a.png"][1] == ("scratch", "dent")
    np.testing.assert_allclose(boxes["b.png"][0], [[0, 0, 12, 9]])  # the crowd region is dropped
    assert boxes["c.png"][0].shape == (0, 4) and boxes["c.png"][1] == ()  # a negative, kept
    assert skipped == [] and "dropped 1 crowd annotation" in caplog.text


def test_coco_crowd_regions_can_be_kept(tmp_path):
    found, _ = read(coco_dataset(tmp_path), crowd="keep")
    np.testing.assert_allclose(by_name(found)["b.png"][0], [[0, 0, 12, 9], [20, 0, 30, 30]])


def test_coco_polygons_and_uncompressed_rle_become_instance_masks(tmp_path):
    found, _ = read(coco_dataset(tmp_path), instance_masks=True, crowd="keep")
    a = next(i for i in found.images if i.path.endswith("a.png"))
    masks = a.render_masks()
    assert masks.shape == (2, 40, 60) and masks.dtype == np.uint8
    # Pixel centres inside [10.5, 30.5] x [5.25, 15.25]: columns 10..29, rows 5..14.
    rows, cols = np.nonzero(masks[0])
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (5, 14, 10, 29)
    b = next(i for i in found.images if i.path.endswith("b.png")).render_masks()
    assert b[1].sum() == 300 and b[1][:, 20:30].all()  # RLE: columns 20..29 of 30 rows


def test_rle_is_column_major_as_coco_stores_it():
    mask = rle_mask({"counts": [1, 2, 3, 6], "size": [3, 4]}, 3, 4)
    expected = np.zeros((3, 4), np.uint8)
    expected[1:3, 0] = 1
    expected[:, 2:] = 1  # runs: 1 background, 2 fg (col 0 rows 1-2), 3 bg (col 1), 6 fg (cols 2-3)
    np.testing.assert_array_equal(mask, expected)
    with pytest.raises(DataError, match="RLE counts sum to 5"):
        rle_mask({"counts": [1, 4], "size": [3, 4]}, 3, 4)


def test_polygon_mask_covers_pixel_centres_inside():
    mask = polygon_mask([[2, 1, 6, 1, 6, 4, 2, 4]], 6, 8)
    assert mask.sum() == 12 and mask[1:4, 2:6].all()


# ---- YOLO -----------------------------------------------------------------------------------
def test_yolo_images_and_labels_folders_with_classes_txt(tmp_path, caplog):
    root = tmp_path / "yolo"
    (root / "labels").mkdir(parents=True)
    (root / "classes.txt").write_text("scratch\ndent\n")
    write_image(root / "images" / "a.jpg", 80, 40)
    (root / "labels" / "a.txt").write_text("0 0.5 0.5 0.25 0.5\n1 0.125 0.25 0.25 0.5\n")
    write_image(root / "images" / "empty.png", 80, 40, mode="L")
    (root / "labels" / "empty.txt").write_text("")  # an explicit negative
    write_image(root / "images" / "unlabelled.png", 80, 40)  # no label file: negative, reported
    (root / "labels" / "notes.txt").write_text("labelled by Sam\n")  # stray text file
    (root / "images" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    assert detect_format(root) == "yolo"
    found, skipped = read(root)
    assert found.class_names == ["scratch", "dent"]
    boxes = by_name(found)
    # cx 40, cy 20, w 20, h 20 -> [30, 10, 50, 30]; cx 10, cy 10, w 20, h 20 -> [0, 0, 20, 20]
    np.testing.assert_allclose(boxes["a.jpg"][0], [[30, 10, 50, 30], [0, 0, 20, 20]])
    assert boxes["a.jpg"][1] == ("scratch", "dent")
    assert boxes["empty.png"][0].shape == (0, 4) and boxes["unlabelled.png"][0].shape == (0, 4)
    assert skipped == []
    assert "1 image(s) have no YOLO label file" in caplog.text and "unlabelled.png" in caplog.text
    assert "ignored 1 .txt file(s) without an image" in caplog.text and "notes.txt" in caplog.text


def test_yolo_data_yaml_names_and_splits_roboflow_layout(tmp_path):
    root = tmp_path / "export"
    for split, n in (("train", 3), ("valid", 1), ("test", 1)):
        for i in range(n):
            write_image(root / split / "images" / f"{split}{i}.jpg", 50, 50)
            (root / split / "labels").mkdir(parents=True, exist_ok=True)
            (root / split / "labels" / f"{split}{i}.txt").write_text("1 0.5 0.5 0.2 0.4\n")
    # Roboflow writes paths relative to a parent folder and names as a mapping or list.
    (root / "data.yaml").write_text("train: ../train/images\nval: ../valid/images\ntest: ../test/images\n"
                                    "nc: 2\nnames: {0: crack, 1: pit}\n")
    found, _ = read(root / "data.yaml")
    assert found.class_names == ["crack", "pit"]
    assert sorted((Path(a.path).name, a.split) for a in found.images) == [
        ("test0.jpg", "test"), ("train0.jpg", "train"), ("train1.jpg", "train"), ("train2.jpg", "train"),
        ("valid0.jpg", "val")]
    np.testing.assert_allclose(found.images[0].boxes, [[20, 15, 30, 35]])
    assert found.images[0].labels == ("pit",)


def test_yolo_polygon_rows_give_the_extent_and_a_mask(tmp_path):
    root = tmp_path / "seg"
    write_image(root / "a.png", 40, 20)
    (root / "a.txt").write_text("0 0.25 0.25 0.75 0.25 0.75 0.75 0.25 0.75\n")
    (root / "classes.txt").write_text("blob\n")
    found, _ = read(root, instance_masks=True)
    np.testing.assert_allclose(found.images[0].boxes, [[10, 5, 30, 15]])
    assert found.images[0].render_masks()[0].sum() == 200


def test_yolo_without_class_names_is_an_error_naming_the_fix(tmp_path):
    write_image(tmp_path / "y" / "a.png", 10, 10)
    (tmp_path / "y" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    with pytest.raises(DataError, match="need class names: add classes.txt"):
        read(tmp_path / "y", "yolo")
    found, _ = read(tmp_path / "y", "yolo", class_order=["spot"])  # ids index class_order
    assert found.images[0].labels == ("spot",)


# ---- Pascal VOC, as LabelImg writes it ---------------------------------------------------------
LABELIMG_XML = """<annotation>
	<folder>images</folder>
	<filename>{filename}</filename>
	<path>C:\\Users\\qa\\Desktop\\images\\{filename}</path>
	<source>
		<database>Unknown</database>
	</source>
	<size>
		<width>{width}</width>
		<height>{height}</height>
		<depth>3</depth>
	</size>
	<segmented>0</segmented>
{objects}</annotation>
"""
LABELIMG_OBJECT = """	<object>
		<name>{name}</name>
		<pose>Unspecified</pose>
		<truncated>{truncated}</truncated>
		<difficult>{difficult}</difficult>
		<bndbox>
			<xmin>{xmin}</xmin>
			<ymin>{ymin}</ymin>
			<xmax>{xmax}</xmax>
			<ymax>{ymax}</ymax>
		</bndbox>
	</object>
"""


def labelimg_xml(path: Path, filename: str, objects: list[tuple], width: int = 60, height: int = 40) -> Path:
    body = "".join(LABELIMG_OBJECT.format(name=n, xmin=a, ymin=b, xmax=c, ymax=d, difficult=diff, truncated=t)
                   for n, a, b, c, d, diff, t in objects)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(LABELIMG_XML.format(filename=filename, width=width, height=height, objects=body))
    return path


def voc_dataset(root: Path) -> Path:
    write_image(root / "JPEGImages" / "p1.jpg", 60, 40)
    write_image(root / "JPEGImages" / "p2.jpg", 60, 40)
    labelimg_xml(root / "Annotations" / "p1.xml", "p1.jpg",
                 [("scratch", 11, 6, 30, 15, 0, 0), ("dent", 1, 1, 60, 40, 1, 1)])
    labelimg_xml(root / "Annotations" / "p2.xml", "p2.jpg", [])  # a negative
    return root / "Annotations"


def test_voc_one_based_inclusive_pixels_and_difficult_objects(tmp_path):
    annotations = voc_dataset(tmp_path)
    assert detect_format(annotations) == "voc"
    found, _ = read(annotations)
    assert found.class_names == ["dent", "scratch"]  # VOC declares no classes: sorted names
    boxes = by_name(found)
    # Pixels 11..30 (1-based, inclusive) span [10, 30]; 1..W spans the whole image.
    np.testing.assert_allclose(boxes["p1.jpg"][0], [[10, 5, 30, 15], [0, 0, 60, 40]])
    assert boxes["p2.jpg"][0].shape == (0, 4)
    dropped, _ = read(annotations, keep_difficult=False)
    np.testing.assert_allclose(by_name(dropped)["p1.jpg"][0], [[10, 5, 30, 15]])


def test_voc_class_typo_suggests_the_known_name(tmp_path):
    annotations = voc_dataset(tmp_path)
    labelimg_xml(annotations / "p1.xml", "p1.jpg", [("scrach", 11, 6, 30, 15, 0, 0)])
    with pytest.raises(AnnotationError) as err:
        read(annotations, class_order=["scratch", "dent"])
    message = str(err.value)
    assert "p1.xml" in message and "object 1 ('scrach')" in message
    assert "did you mean 'scratch'?" in message and "on_bad_annotation: skip" in message
    found, skipped = read(annotations, on_bad="skip", class_order=["scratch", "dent"])
    assert [Path(p).name for p, _ in skipped] == ["p1.jpg"] and "scrach" in skipped[0][1]
    assert [Path(a.path).name for a in found.images] == ["p2.jpg"]


# ---- masks ---------------------------------------------------------------------------------
def test_mask_components_two_blobs_of_one_class_and_a_second_class():
    mask = np.zeros((20, 30), np.uint8)
    mask[2:5, 3:8] = 1  # blob 1 of class value 1
    mask[10:18, 20:22] = 1  # blob 2 of class value 1
    mask[12:14, 5:9] = 2  # class value 2
    mask[0, 29] = 2  # a one-pixel speck: under min_area
    found = mask_components(mask, values=[1, 2], min_area=2, with_masks=True)
    np.testing.assert_allclose(found.boxes, [[3, 2, 8, 5], [20, 10, 22, 18], [5, 12, 9, 14]])
    assert found.classes.tolist() == [0, 0, 1] and found.dropped == 1
    assert found.masks.shape == (3, 20, 30) and found.masks[1].sum() == 16


def test_anti_aliased_binary_masks_are_thresholded_at_half_scale():
    mask = np.zeros((10, 10), np.uint8)
    mask[2:6, 2:6] = 255
    mask[1, 1:7] = 60  # anti-aliased halo: mostly background
    found = mask_components(mask)
    np.testing.assert_allclose(found.boxes, [[2, 2, 6, 6]])


def test_masks_folder_beside_images_two_classes(tmp_path):
    root = tmp_path / "m"
    write_image(root / "x.jpg", 30, 20, mode="L")
    mask = np.zeros((20, 30), np.uint8)
    mask[2:5, 3:8] = 1
    mask[10:18, 20:22] = 1
    mask[12:14, 5:9] = 2
    Image.fromarray(mask).save(root / "x.png")  # lossless file beside the JPEG: its mask
    write_image(root / "clean.jpg", 30, 20, mode="L")
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(root / "clean.png")
    assert detect_format(root) == "masks"
    found, _ = read(root, mask_values=[1, 2], class_order=["scratch", "dent"])
    boxes = by_name(found)
    assert sorted(boxes) == ["clean.jpg", "x.jpg"]
    np.testing.assert_allclose(boxes["x.jpg"][0], [[3, 2, 8, 5], [20, 10, 22, 18], [5, 12, 9, 14]])
    assert boxes["x.jpg"][1] == ("scratch", "scratch", "dent") and boxes["clean.jpg"][0].shape == (0, 4)


def test_masks_in_their_own_folder_match_by_stem_and_size_is_checked(tmp_path):
    write_image(tmp_path / "img" / "a.png", 30, 20)
    mask = np.zeros((20, 30), np.uint8)
    mask[4:9, 4:9] = 255
    (tmp_path / "gt").mkdir()
    Image.fromarray(mask).save(tmp_path / "gt" / "a_mask.png")
    found, _ = read(tmp_path / "gt", "masks", images=str(tmp_path / "img"), class_order=["spot"])
    np.testing.assert_allclose(found.images[0].boxes, [[4, 4, 9, 9]])
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "gt" / "a_mask.png")
    with pytest.raises(AnnotationError, match="the mask is 10x10 but image .* is 30x20"):
        read(tmp_path / "gt", "masks", images=str(tmp_path / "img"))


# ---- bad annotations: a named error, or a reported skip ------------------------------------------
def _ann(bbox, category_id=1, image_id=1, ann_id=7):
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": bbox, "iscrowd": 0,
            "area": 1.0, "segmentation": []}


BAD_COCO = {
    "outside": (_ann([50, 30, 30, 20]), "reaches 20.0 px outside the 60x40 image"),
    "x1 < x0": (_ann([30, 5, -10, 10]), "has x1 < x0"),
    "zero area": (_ann([10, 5, 0, 10]), "zero width or height"),
    "NaN": (_ann([float("nan"), 5, 10, 10]), "is not a number"),
    "unknown category": (_ann([10, 5, 10, 10], category_id=9), "category_id 9 is not among the categories"),
    "not a bbox": (_ann("10 5 10 10"), "not [x, y, width, height]"),
}


@pytest.mark.parametrize("case", sorted(BAD_COCO))
def test_bad_coco_box_is_a_named_error_or_a_reported_skip(tmp_path, case):
    annotation, phrase = BAD_COCO[case]
    path = coco_dataset(tmp_path, annotations=[annotation])
    with pytest.raises(AnnotationError) as err:
        read(path)
    message = str(err.value)
    assert "'instances_default.json' image id 1 ('a.png')" in message and "annotation id 7 (#0)" in message
    assert phrase in message and "on_bad_annotation: skip" in message
    found, skipped = read(path, on_bad="skip")
    assert len(skipped) == 1 and skipped[0][0].endswith("a.png") and phrase in skipped[0][1]
    assert sorted(Path(a.path).name for a in found.images) == ["b.png", "c.png"]  # a.png left out whole


def test_small_overshoot_is_clipped_not_an_error(tmp_path):
    path = coco_dataset(tmp_path, annotations=[_ann([-1.5, 30, 62.5, 11.5])])
    found, skipped = read(path)
    np.testing.assert_allclose(by_name(found)["a.png"][0], [[0, 30, 60, 40]])
    assert skipped == []


def test_missing_and_corrupt_images_name_the_annotation(tmp_path):
    path = coco_dataset(tmp_path)
    (tmp_path / "images" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (tmp_path / "images" / "c.png").unlink()
    with pytest.raises(AnnotationError, match=r"image id 2 \('b.png'\): cannot read image .*corrupt"):
        read(path)
    found, skipped = read(path, on_bad="skip")
    reasons = dict((Path(p).name, r) for p, r in skipped)
    assert "corrupt" in reasons["b.png"] and "'c.png' does not exist" in reasons["c.png"]
    assert "set data.init_args.images" in reasons["c.png"]
    assert [Path(a.path).name for a in found.images] == ["a.png"]


def test_declared_size_must_match_the_image(tmp_path):
    images = [{"id": 1, "width": 40, "height": 60, "file_name": "a.png"}]  # rotated
    path = coco_dataset(tmp_path, annotations=[_ann([1, 1, 5, 5])], images=images)
    with pytest.raises(AnnotationError, match="annotation is 40x60 but image .* is 60x40"):
        read(path)


@pytest.mark.parametrize("text, phrase", [("", "is empty"), ("{\"images\": [", "is not valid JSON"),
                                          ("[1, 2]", "is not a COCO detection file")])
def test_empty_or_corrupt_coco_file_is_always_an_error(tmp_path, text, phrase):
    (tmp_path / "x.json").write_text(text)
    with pytest.raises(AnnotationError, match=phrase):
        read(tmp_path / "x.json", on_bad="skip")


def test_coco_annotation_of_an_unknown_image_id(tmp_path):
    path = coco_dataset(tmp_path, annotations=[_ann([1, 1, 5, 5], image_id=42)])
    with pytest.raises(AnnotationError, match="refers to image_id 42, which is not in 'images'"):
        read(path)
    found, skipped = read(path, on_bad="skip")
    assert len(found.images) == 3 and skipped[0][0].endswith("instances_default.json")


@pytest.mark.parametrize("line, phrase", [
    ("0 nan 0.5 0.1 0.1", "is not a number"),
    ("3 0.5 0.5 0.1 0.1", "class id 3 is not one of the 2 classes of 'classes.txt'"),
    ("0 0.5 0.5 0.1", "has 4 values"),
    ("0 12 8 4 4", "YOLO values are fractions 0..1"),
    ("zero 0.5 0.5 0.1 0.1", "is not numbers"),
])
def test_bad_yolo_lines_name_the_file_and_line(tmp_path, line, phrase):
    write_image(tmp_path / "y" / "a.png", 20, 20)
    write_image(tmp_path / "y" / "b.png", 20, 20)
    (tmp_path / "y" / "classes.txt").write_text("scratch\ndent\n")
    (tmp_path / "y" / "a.txt").write_text(f"0 0.5 0.5 0.2 0.2\n{line}\n")
    with pytest.raises(AnnotationError) as err:
        read(tmp_path / "y")
    assert "a.txt" in str(err.value) and "line 2" in str(err.value) and phrase in str(err.value)
    found, skipped = read(tmp_path / "y", on_bad="skip")
    assert [Path(a.path).name for a in found.images] == ["b.png"]
    assert len(skipped) == 1 and skipped[0][0].endswith("a.png") and phrase in skipped[0][1]


def test_empty_or_corrupt_voc_files_follow_the_policy(tmp_path):
    annotations = voc_dataset(tmp_path)
    (annotations / "broken.xml").write_text("<annotation><filename>p1.jpg</filename>")
    (annotations / "empty.xml").write_text("")
    with pytest.raises(AnnotationError, match="broken.xml' is not valid XML"):
        read(annotations)
    found, skipped = read(annotations, on_bad="skip")
    assert sorted(Path(p).name for p, _ in skipped) == ["broken.xml", "empty.xml"]
    assert len(found.images) == 2


def test_unclear_format_names_the_option(tmp_path):
    (tmp_path / "a.csv").write_text("x")
    with pytest.raises(DataError, match="set data.init_args.format"):
        detect_format(tmp_path / "a.csv")


def test_find_mask_inverts_the_mask_patterns(tmp_path):
    from core.data import find_mask

    for name in ("a.jpg", "a.png", "b.png", "b_mask.png", "c.jpg", "c_GT.bmp", "d.png", "e.jpg", "e_label.jpg"):
        write_image(tmp_path / name, 4, 4)
    write_image(tmp_path / "masks" / "d.png", 4, 4)
    listings: dict = {}
    found = {n: find_mask(tmp_path / n, listings=listings) for n in ("a.jpg", "b.png", "c.jpg", "d.png", "e.jpg")}
    assert {n: m.relative_to(tmp_path).as_posix() if m else None for n, m in found.items()} == {
        "a.jpg": "a.png",  # a lossless file beside a JPEG of the same stem
        "b.png": "b_mask.png", "c.jpg": "c_GT.bmp", "d.png": "masks/d.png", "e.jpg": "e_label.jpg"}
    assert find_mask(tmp_path / "a.png") is None  # a PNG has no {stem} mask: never the JPEG


def test_binary_masks_with_several_classes_need_mask_values(tmp_path):
    write_image(tmp_path / "x.jpg", 8, 8, mode="L")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "x.png")
    with pytest.raises(DataError, match="binary masks hold one class.*set mask_values"):
        read(tmp_path, "masks", class_order=["scratch", "dent"])


def test_yolo_image_list_files_are_not_stray_labels(tmp_path, caplog):
    root = tmp_path / "y"
    for name in ("a", "b"):
        write_image(root / "images" / f"{name}.png", 10, 10)
        (root / "labels").mkdir(exist_ok=True)
        (root / "labels" / f"{name}.txt").write_text("0 0.5 0.5 0.4 0.4\n")
    (root / "train.txt").write_text("images/a.png\n")
    (root / "val.txt").write_text("images/b.png\n")
    (root / "data.yaml").write_text("train: train.txt\nval: val.txt\nnames: [pit]\n")
    found, _ = read(root)
    assert sorted((Path(a.path).name, a.split) for a in found.images) == [("a.png", "train"), ("b.png", "val")]
    assert "without an image" not in caplog.text and "no ['test']" in caplog.text
