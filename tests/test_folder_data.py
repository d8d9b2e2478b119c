"""Image folders and manifests as other tools write them: bad files, labels, masks, modes."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import pytest
from lightning.pytorch import Trainer
from PIL import Image

from core.data import DataError
from core.image_reader import IMAGE
from core.predict_bundle import read_input
from core.preprocess import expand_inputs, image_to_array, read_image_file
from domains.manufacturing import DefectClassificationTask, DefectFolderDataModule

from .conftest import REALDATA, TINY, make_defect_folders, write_defect_image


def truncate(path: Path) -> None:
    """Cut a PNG in half: the header still opens, the pixels do not decode."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def write_manifest(tmp_path: Path, rows: list[str], header: str = "path,label,split") -> Path:
    path = tmp_path / "list.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


@pytest.fixture
def split_images(tmp_path: Path) -> list[str]:
    """Manifest rows for 8 good and 8 scratch images with a fixed train/val/test split."""
    make_defect_folders(tmp_path / "imgs", per_class=8)
    splits = ["train"] * 4 + ["val", "val", "test", "test"]
    return [f"imgs/{c}/{c}_{i:03d}.png,{c},{splits[i]}" for c in ("good", "scratch") for i in range(8)]


# ---- every file of every split is checked at setup ----------------------------------------
def test_corrupt_file_in_the_test_split_stops_fit(tmp_path, split_images):
    truncate(tmp_path / "imgs" / "scratch" / "scratch_007.png")  # a test-split row
    dm = DefectFolderDataModule(manifest=str(write_manifest(tmp_path, split_images)), image_size=32)
    with pytest.raises(DataError, match=r"scratch_007.png.*corrupt.*on_bad_file: skip"):
        dm.setup("fit")


def test_several_bad_files_are_named_in_one_error(tmp_path):
    root = make_defect_folders(tmp_path / "d", per_class=6)
    truncate(root / "good" / "good_001.png")
    (root / "scratch" / "notes.png").write_text("not an image")
    with pytest.raises(DataError, match=r"2 unreadable images(?s:.*)good_001.png(?s:.*)notes.png"):
        _ = DefectFolderDataModule(root=str(root)).source


def test_skip_leaves_bad_entries_out_of_every_split_and_reports_them(tmp_path, split_images):
    truncate(tmp_path / "imgs" / "scratch" / "scratch_007.png")
    rows = [*split_images, "imgs/good/good_000.png,,train", "imgs/gone.png,good,test"]
    dm = DefectFolderDataModule(manifest=str(write_manifest(tmp_path, rows)), on_bad_file="skip",
                                image_size=32, batch_size=4)
    assert dm.split_sizes() == {"train": 8, "val": 4, "test": 3}
    skipped = {Path(p).name: reason for p, reason in dm.skipped}
    assert set(skipped) == {"scratch_007.png", "good_000.png", "gone.png"}
    assert "row 18" in skipped["good_000.png"] and "blank label" in skipped["good_000.png"]
    assert "does not exist" in skipped["gone.png"]
    task = DefectClassificationTask(**TINY, in_chans=1, num_classes=2, class_names=dm.class_names)
    trainer = Trainer(accelerator="cpu", max_epochs=1, logger=True, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(task, datamodule=dm)
    trainer.test(task, datamodule=dm)  # the corrupt test image is not in the test split any more
    report = list(csv.DictReader((Path(trainer.log_dir) / "skipped_files.csv").open()))
    assert sorted(Path(r["path"]).name for r in report) == sorted(skipped)


def test_predict_folder_with_a_corrupt_file(tmp_path):
    root = make_defect_folders(tmp_path / "d", per_class=6)
    new = make_defect_folders(tmp_path / "new", per_class=2, classes=("x",))
    truncate(new / "x" / "x_001.png")
    dm = DefectFolderDataModule(root=str(root), image_size=32, predict_paths=[str(new)])
    with pytest.raises(DataError, match="x_001.png"):
        dm.predict_dataloader()
    dm = DefectFolderDataModule(root=str(root), image_size=32, predict_paths=[str(new)], on_bad_file="skip")
    batch = next(iter(dm.predict_dataloader()))
    assert [Path(i).name for i in batch["id"]] == ["x_000.png"]


# ---- labels ----------------------------------------------------------------------------------
def test_label_outside_class_order_names_the_row_the_value_and_the_valid_labels(tmp_path, split_images):
    rows = list(split_images)
    rows[2] = rows[2].replace(",good,", ",scrach,")  # CSV row 4
    manifest = str(write_manifest(tmp_path, rows))
    with pytest.raises(DataError, match=r"row 4: 'scrach'.*valid labels are \['good', 'scratch'\]"):
        _ = DefectFolderDataModule(manifest=manifest, class_order=["good", "scratch"]).source


def test_class_order_sets_the_order_and_refuses_unknown_class_folders(tmp_path):
    root = make_defect_folders(tmp_path / "d", per_class=6, classes=("good", "scratch", "crak"))
    dm = DefectFolderDataModule(root=str(root), class_order=["scratch", "good", "crak"])
    assert dm.class_names == ["scratch", "good", "crak"]
    assert dm.source.labels[0] == 2  # crak/ sorts first on disk, its index comes from class_order
    with pytest.raises(DataError, match=r"class folder 'crak': 'crak'.*\['good', 'scratch', 'crack'\]"):
        _ = DefectFolderDataModule(root=str(root), class_order=["good", "scratch", "crack"]).source


def test_blank_label_is_an_error_naming_the_row(tmp_path, split_images):
    rows = list(split_images)
    rows[1] = rows[1].replace(",good,", ",  ,")  # CSV row 3
    with pytest.raises(DataError, match=r"row 3 \('imgs/good/good_001.png'\) has a blank label"):
        _ = DefectFolderDataModule(manifest=str(write_manifest(tmp_path, rows))).source


def test_classes_with_few_samples_are_warned_with_counts(tmp_path, split_images, caplog):
    rows = list(split_images)
    rows[2] = rows[2].replace(",good,", ",Good,")
    dm = DefectFolderDataModule(manifest=str(write_manifest(tmp_path, rows)))
    with caplog.at_level(logging.WARNING):
        assert dm.class_names == ["Good", "good", "scratch"]
    assert "'Good': 1, a typo of 'good'?" in caplog.text


# ---- what is (not) a sample -------------------------------------------------------------------
def test_masks_beside_images_are_left_out_and_reported(tmp_path, caplog):
    root = make_defect_folders(tmp_path / "d", per_class=6)
    mask = np.zeros((48, 48), np.uint8)
    for name in ("scratch/scratch_000_mask.png", "scratch/scratch_001_GT.png", "good/good_000_label.png",
                 "scratch/masks/scratch_002.png", "ground_truth/scratch/000_mask.png"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask).save(root / name)
    with caplog.at_level(logging.WARNING):
        dm = DefectFolderDataModule(root=str(root))
        assert dm.class_names == ["good", "scratch"]
    assert len(dm.source) == 12
    used = [str(Path(p).relative_to(root)).lower() for p in dm.source.paths]
    assert not any("mask" in p or "_gt" in p or "label" in p for p in used)
    assert "left out 5 file(s)/folder(s)" in caplog.text and "look like masks" in caplog.text
    everything = DefectFolderDataModule(root=str(root), mask_patterns=[])
    assert everything.class_names == ["good", "ground_truth", "scratch"] and len(everything.source) == 17


def test_lossless_file_beside_a_jpeg_of_the_same_name_is_its_mask(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("good", "crack"):
        for i in range(5):
            jpg = tmp_path / "d" / cls / "Imgs" / f"exp1_num_{i}.jpg"
            write_defect_image(jpg, cls == "crack", rng)
            Image.open(jpg).convert("L").save(jpg.with_suffix(".png"))  # the magnetic-tile layout
    Image.fromarray(np.zeros((48, 48), np.uint8)).save(tmp_path / "d" / "good" / "Imgs" / "alone.png")
    dm = DefectFolderDataModule(root=str(tmp_path / "d"), image_size=32)
    assert sorted(Path(p).name for p in dm.source.paths if "good" in p) == [
        "alone.png", *(f"exp1_num_{i}.jpg" for i in range(5))]
    assert len(dm.source) == 11


MAGNETIC_TILES = REALDATA / "manufacturing" / "magnetic_tile_defects"


@pytest.mark.realdata
@pytest.mark.skipif(not MAGNETIC_TILES.is_dir(), reason=f"real data not found at {MAGNETIC_TILES}")
def test_magnetic_tiles_masks_beside_images_are_not_samples():
    dm = DefectFolderDataModule(root=str(MAGNETIC_TILES), good_class="MT_Free", image_size=64)
    assert len(dm.source) == 792 and all(p.endswith(".jpg") for p in dm.source.paths)
    assert dm.num_classes == 6 and dm.skipped == []


def test_stray_files_are_ignored(tmp_path):
    root = make_defect_folders(tmp_path / "d", per_class=6)
    (root / "good" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0 not an image")
    (root / "good" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "scratch" / "desktop.ini").write_text("[.ShellClassInfo]\n")
    (root / "README.txt").write_text("images from line 3\n")
    (root / "scratch" / "._scratch_000.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (root / "good" / ".ipynb_checkpoints").mkdir()
    (root / "good" / ".ipynb_checkpoints" / "good_000-checkpoint.png").write_bytes(b"junk")
    (root / ".hidden_class").mkdir()
    dm = DefectFolderDataModule(root=str(root), image_size=32)
    assert dm.class_names == ["good", "scratch"]
    assert sorted(Path(p).name for p in dm.source.paths) == sorted(
        [f"good_{i:03d}.png" for i in range(6)] + [f"scratch_{i:03d}.png" for i in range(6)])
    assert dm.skipped == []


def test_predict_folders_leave_hidden_files_out(tmp_path):
    new = make_defect_folders(tmp_path / "new", per_class=2, classes=("x",))
    (new / "x" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")  # no suffix, like many DICOMs
    (new / "x" / "._x_000.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (new / "__MACOSX").mkdir()
    (new / "__MACOSX" / "x_001.png").write_bytes(b"\x00\x05\x16\x07")
    assert [p.name for p in expand_inputs([new], (".png", ""))] == ["x_000.png", "x_001.png"]
    dm = DefectFolderDataModule(root=str(make_defect_folders(tmp_path / "d", per_class=6)), image_size=32,
                                predict_paths=[str(new)])
    assert len(next(iter(dm.predict_dataloader()))["id"]) == 2


def test_images_far_below_image_size_are_warned_by_name(tmp_path, caplog):
    root = make_defect_folders(tmp_path / "d", per_class=6)
    Image.fromarray(np.full((1, 1), 128, np.uint8)).save(root / "good" / "dot.png")
    with caplog.at_level(logging.WARNING):
        _ = DefectFolderDataModule(root=str(root), image_size=64).source
    assert "1 image(s) are far smaller than image_size [64, 64]" in caplog.text
    assert "dot.png (1x1)" in caplog.text


# ---- channels: convert, never ask the user to convert ------------------------------------------
def _rng_image(shape, seed=0, dtype=np.uint8, high=256):
    return np.random.default_rng(seed).integers(0, high, shape).astype(dtype)


def write_mode(path: Path, kind: str) -> np.ndarray:
    """Write a 20x20 image the way other tools store ``kind``; return its stored pixel values."""
    if kind == "RGBA":  # transparent pixels keep their colour as stored
        arr = _rng_image((20, 20, 4))
        arr[:10, :, 3] = 0
        Image.fromarray(arr, "RGBA").save(path)
        return arr[:, :, :3]
    if kind == "LA":
        arr = _rng_image((20, 20, 2))
        Image.fromarray(arr, "LA").save(path)
        return arr[:, :, :1]
    if kind in ("P", "P+transparency"):
        rgb = _rng_image((20, 20, 3)) // 64 * 64  # few colours: the palette is exact
        img = Image.fromarray(rgb).quantize(colors=64)
        kwargs = {"transparency": 0} if kind == "P+transparency" else {}
        img.save(path, **kwargs)
        return np.asarray(img.convert("RGB"))
    if kind == "I;16":
        arr = _rng_image((20, 20), dtype=np.uint16, high=65536)
        arr[0, 0], arr[0, 1] = 0, 65535
        Image.fromarray(arr).save(path)
        return arr[:, :, None]
    if kind == "1":
        arr = _rng_image((20, 20), high=2).astype(bool)
        Image.fromarray(arr).save(path)
        return arr[:, :, None].astype(np.uint8)
    if kind == "JPEG":
        arr = np.full((20, 20, 3), (200, 40, 90), np.uint8)  # flat: JPEG keeps it almost exactly
        Image.fromarray(arr).save(path, quality=100)
        return np.asarray(Image.open(path))
    raise ValueError(kind)


KINDS = ["RGBA", "LA", "P", "P+transparency", "I;16", "1", "JPEG"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("channels", ["gray", "rgb"])
def test_every_mode_is_converted_to_the_configured_channels(tmp_path, kind, channels):
    path = tmp_path / ("img.jpg" if kind == "JPEG" else "img.png")
    stored = write_mode(path, kind)
    scale = 65535.0 if kind == "I;16" else 1.0 if kind == "1" else 255.0
    values = stored.astype(np.float32) / scale
    if channels == "gray" and values.shape[2] == 3:
        values = (values @ np.array([0.299, 0.587, 0.114], np.float32))[:, :, None]
    if channels == "rgb" and values.shape[2] == 1:
        values = np.repeat(values, 3, axis=2)
    image = read_image_file(path, channels)
    assert image.dtype == np.float32 and image.shape == (20, 20, 1 if channels == "gray" else 3)
    np.testing.assert_allclose(image, values, atol=1e-6)
    # The torch-free bundle predictor reads the file identically.
    n = image.shape[2]
    contract = IMAGE.contract(channels=channels, in_chans=n, image_size=20, mean=[0.5] * n, std=[0.2] * n)
    np.testing.assert_array_equal(read_input(path, contract)[0], image)


def test_sixteen_bit_gray_keeps_its_full_range(tmp_path):
    arr = np.array([[0, 1, 4096, 65535]], np.uint16)
    Image.fromarray(arr).save(tmp_path / "g16.png")
    expected = arr.astype(np.float32)[:, :, None] / 65535
    np.testing.assert_array_equal(read_image_file(tmp_path / "g16.png", "gray"), expected)
    # Pillow < 11 opens the same file as 32-bit "I": the range is still 16-bit.
    old_pillow = Image.fromarray(arr.astype(np.int32), "I")
    old_pillow.format = "PNG"
    np.testing.assert_array_equal(image_to_array(old_pillow, "gray")[0], expected)


def test_mixed_folder_is_converted_and_summarised_in_one_line(tmp_path, caplog):
    root = make_defect_folders(tmp_path / "d", per_class=6, mode="RGB")
    write_mode(root / "good" / "rgba.png", "RGBA")
    write_mode(root / "good" / "rgba2.png", "RGBA")
    write_mode(root / "scratch" / "pal.png", "P")
    write_defect_image(root / "scratch" / "gray.png", True, np.random.default_rng(1))
    with caplog.at_level(logging.INFO, logger="core.filescan"):
        dm = DefectFolderDataModule(root=str(root), image_size=32, batch_size=16)
        assert dm.source.channels == "rgb"  # most files are colour
    summary = [r.getMessage() for r in caplog.records if "converted to channels" in r.getMessage()]
    assert summary == ["converted to channels: rgb: 1 image(s) L: gray repeated to RGB; "
                       "1 image(s) P: palette expanded; 2 image(s) RGBA: alpha dropped"]
    dm.setup("fit")
    dm.mean, dm.std = [0.5] * 3, [0.25] * 3
    for split in ("train", "val", "test"):
        for sample in dm.dataset(split):
            assert sample["image"].shape == (3, 32, 32)


def test_unknown_good_class_is_an_error_not_a_guess(tmp_path):
    # Folders ok/ and ng/ with the default good_class 'good': the operating point used to fall
    # back to the task default, whose positive class would have been 'ok'.
    root = make_defect_folders(tmp_path / "d", per_class=4, classes=("ng", "ok"))
    dm = DefectFolderDataModule(root=str(root), image_size=32)
    with pytest.raises(DataError, match="good_class 'good' is not among the classes \\['ng', 'ok'\\]"):
        dm.positive_classes  # noqa: B018
    assert DefectFolderDataModule(root=str(root), good_class="ok").positive_classes == ["ng"]
