"""Defect detection data: factory folders with masks beside the images (the magnetic-tile
layout) give one box per mask blob with the folder's class; the defect-free folder gives
negatives; masks that contradict their folder are bad annotations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.data import collate_samples
from core.detection_data import DetectionDataset, EvalDetectionTransform
from core.errors import DataError
from domains.manufacturing import DefectDetectionDataModule

from .conftest import REALDATA

# Blob cores (x0, y0, x1, y1) per defect folder, in a 64x48 (width x height) tile.
BLOBS = {"MT_Crack": [(4, 6, 14, 9), (30, 20, 33, 40)], "MT_Blowhole": [(40, 10, 48, 18)]}


def write_tile(jpg: Path, blobs, rng: np.random.Generator) -> None:
    """A gray JPEG tile and its same-stem PNG mask: 255 inside each blob, an anti-aliased
    ring of 90 around it (below the 128 threshold, so not part of the box)."""
    jpg.parent.mkdir(parents=True, exist_ok=True)
    tile = rng.normal(120, 8, (48, 64)).clip(0, 255).astype(np.uint8)
    mask = np.zeros((48, 64), np.uint8)
    for x0, y0, x1, y1 in blobs:
        mask[max(y0 - 1, 0):y1 + 1, max(x0 - 1, 0):x1 + 1] = 90
    for x0, y0, x1, y1 in blobs:
        mask[y0:y1, x0:x1] = 255
        tile[y0:y1, x0:x1] = 30
    Image.fromarray(tile).save(jpg, quality=90)
    Image.fromarray(mask).save(jpg.with_suffix(".png"))


def magnetic_tile_layout(root: Path, per_class: int = 4) -> Path:
    rng = np.random.default_rng(0)
    for folder in ("MT_Crack", "MT_Blowhole", "MT_Free"):
        for i in range(per_class):
            write_tile(root / folder / "Imgs" / f"exp{i}_num_{100 + i}.jpg", BLOBS.get(folder, []), rng)
    (root / "MT_Free" / "Imgs" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "MT_Crack" / "Imgs" / "notes.txt").write_text("line 3, shift B\n")
    (root / "README.md").write_text("magnetic tiles\n")
    return root


def test_one_box_per_blob_with_the_folder_class(tmp_path):
    root = magnetic_tile_layout(tmp_path / "tiles")
    dm = DefectDetectionDataModule(root=str(root), good_class="MT_Free", image_size=[24, 32],
                                   val_fraction=0.25, test_fraction=0.25)
    assert dm.class_names == ["MT_Blowhole", "MT_Crack"] and dm.num_classes == 2 and dm.in_chans == 1
    assert len(dm.source) == 12 and all(p.endswith(".jpg") for p in dm.source.paths)
    for item in dm.source.images:
        folder = Path(item.path).parent.parent.name
        np.testing.assert_allclose(item.boxes, np.array(BLOBS.get(folder, []), np.float32).reshape(-1, 4))
        assert item.labels == (folder,) * len(BLOBS.get(folder, []))
    for split, idx in dm.splits.items():  # defect-free tiles in every split
        assert 0 < dm.source.labels[idx].sum() < len(idx), split
    # After the eval resize to 32x24 (half size) the boxes halve.
    dm.ensure_stats()
    data = DetectionDataset(dm.source, np.arange(12), EvalDetectionTransform(dm.hparams.image_size, dm.mean, dm.std))
    batch = collate_samples([data[i] for i in range(12)], ragged_keys=dm.ragged_keys)
    for sample_id, boxes, labels in zip(batch["id"], batch["boxes"], batch["labels"], strict=True):
        folder = Path(sample_id).parent.parent.name
        np.testing.assert_allclose(boxes.numpy(), np.array(BLOBS.get(folder, []), np.float32).reshape(-1, 4) / 2)
        assert labels.tolist() == [dm.class_names.index(folder)] * len(BLOBS[folder]) if folder in BLOBS \
            else labels.tolist() == []
    train = [Path(dm.source.paths[i]).parent.parent.name for i in dm.splits["train"]]
    expected = np.concatenate([np.array(BLOBS.get(f, []), np.float32).reshape(-1, 4) / 2 for f in train])
    np.testing.assert_allclose(dm.train_boxes(), expected)


def test_instance_masks_are_the_blobs(tmp_path):
    dm = DefectDetectionDataModule(root=str(magnetic_tile_layout(tmp_path / "t", per_class=2)),
                                   good_class="MT_Free", image_size=[48, 64], instance_masks=True,
                                   val_fraction=0.0, test_fraction=0.0)
    crack = next(i for i, p in enumerate(dm.source.paths) if "MT_Crack" in p)
    masks = dm.source.read(crack)["masks"]
    assert masks.shape == (2, 48, 64) and masks[0].sum() == 30 and masks[1].sum() == 60


def test_an_empty_mask_in_a_defect_folder_is_a_bad_annotation(tmp_path):
    root = magnetic_tile_layout(tmp_path / "tiles")
    empty = root / "MT_Crack" / "Imgs" / "exp1_num_101.png"
    Image.fromarray(np.zeros((48, 64), np.uint8)).save(empty)
    with pytest.raises(DataError) as err:
        DefectDetectionDataModule(root=str(root), good_class="MT_Free").setup("fit")
    assert str(empty) in str(err.value) and "has no object" in str(err.value)
    assert "good_class" in str(err.value) and "on_bad_annotation: skip" in str(err.value)
    dm = DefectDetectionDataModule(root=str(root), good_class="MT_Free", on_bad_annotation="skip")
    assert len(dm.source) == 11
    assert [Path(p).name for p, _ in dm.skipped] == ["exp1_num_101.jpg"]


def test_forgetting_good_class_names_the_fix(tmp_path):
    root = magnetic_tile_layout(tmp_path / "tiles", per_class=2)
    with pytest.raises(DataError, match="MT_Free.*has no object.*set data.init_args.good_class"):
        DefectDetectionDataModule(root=str(root)).setup("fit")


def test_missing_mask_in_a_defect_folder_and_objects_in_the_good_folder(tmp_path):
    root = magnetic_tile_layout(tmp_path / "tiles", per_class=2)
    (root / "MT_Blowhole" / "Imgs" / "exp0_num_100.png").unlink()
    with pytest.raises(DataError, match="exp0_num_100.jpg' has no mask beside it"):
        DefectDetectionDataModule(root=str(root), good_class="MT_Free").setup("fit")
    root = magnetic_tile_layout(tmp_path / "tiles2", per_class=2)
    mask = np.zeros((48, 64), np.uint8)
    mask[5:10, 5:10] = 255
    Image.fromarray(mask).save(root / "MT_Free" / "Imgs" / "exp1_num_101.png")
    with pytest.raises(DataError, match="has 1 object.*defect-free folder"):
        DefectDetectionDataModule(root=str(root), good_class="MT_Free").setup("fit")


def test_an_annotation_file_instead_of_folders(tmp_path):
    root = tmp_path / "yolo"
    (root / "labels").mkdir(parents=True)
    (root / "classes.txt").write_text("scratch\n")
    for i in range(4):
        Image.fromarray(np.full((20, 20), 100, np.uint8)).save(root / f"p{i}.png")
        (root / f"p{i}.txt").write_text("0 0.5 0.5 0.5 0.5\n" if i % 2 else "")
    dm = DefectDetectionDataModule(annotations=str(root), image_size=16)
    assert dm.class_names == ["scratch"] and len(dm.source) == 4
    with pytest.raises(DataError, match="exactly one of data.init_args.root"):
        DefectDetectionDataModule(root=str(root), annotations=str(root))


MAGNETIC_TILES = REALDATA / "manufacturing" / "magnetic_tile_defects"


@pytest.mark.realdata
@pytest.mark.skipif(not MAGNETIC_TILES.is_dir(), reason=f"real data not found at {MAGNETIC_TILES}")
def test_magnetic_tiles_give_boxes_from_their_masks():
    dm = DefectDetectionDataModule(root=str(MAGNETIC_TILES), good_class="MT_Free", on_bad_annotation="skip",
                                   image_size=64)
    assert dm.class_names == ["MT_Blowhole", "MT_Break", "MT_Crack", "MT_Fray", "MT_Uneven"]
    # 792 tiles; the 4 MT_Uneven tiles with empty masks, and 2 whose only marks are specks under
    # min_mask_area (1 and 3 px at >= 128), are skipped and reported.
    assert len(dm.source) == 786 and len(dm.skipped) == 6
    assert all("MT_Uneven" in p and "has no object" in r for p, r in dm.skipped)
    for item in dm.source.images:
        free = "MT_Free" in item.path
        assert (len(item.boxes) == 0) == free
    assert len(dm.train_boxes()) > 0 and (dm.train_boxes()[:, 2:] <= 64).all()
