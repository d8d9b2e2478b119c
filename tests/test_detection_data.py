"""The detection datamodule: batches in the agreed contract, boxes scaled with the image,
negatives kept in every split, augmentation that drops boxes by the documented rule, bad
annotations reported into skipped_files.csv."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import torch
from PIL import Image

from core.data import collate_samples
from core.detection_data import (
    DetectionDataModule,
    DetectionDataset,
    EvalDetectionTransform,
    TrainDetectionTransform,
    box_rule,
    compose_with_boxes,
)
from core.errors import DataError

from .conftest import cpu_trainer
from .test_annotations import coco_dataset, labelimg_xml, voc_dataset, write_image

SIZE = [20, 30]  # network input (height, width)


def eval_batch(dm: DetectionDataModule) -> dict:
    """Every sample of the data set through the evaluation transform, as one batch."""
    dm.ensure_stats()
    dataset = DetectionDataset(dm.source, np.arange(len(dm.source)),
                               EvalDetectionTransform(dm.hparams.image_size, dm.mean, dm.std))
    return collate_samples([dataset[i] for i in range(len(dataset))], ragged_keys=dm.ragged_keys)


def by_id(batch: dict, key: str = "boxes") -> dict[str, np.ndarray]:
    return {Path(i).name: v.numpy() for i, v in zip(batch["id"], batch[key], strict=True)}


def yolo_dataset(root: Path, positives: int = 12, negatives: int = 8, size: int = 40) -> Path:
    """Gray squares: positives carry one bright 10x10 'spot' (class 0) at a known place."""
    (root / "labels").mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("spot\n")
    for i in range(positives + negatives):
        image = np.full((size, size), 60, np.uint8)
        label = ""
        if i < positives:
            x = 4 + i
            image[10:20, x:x + 10] = 250
            label = f"0 {(x + 5) / size} {15 / size} {10 / size} {10 / size}\n"
        (root / "images").mkdir(exist_ok=True)
        Image.fromarray(image).save(root / "images" / f"im{i:02d}.png")
        (root / "labels" / f"im{i:02d}.txt").write_text(label)
    return root


# ---- the batch contract ------------------------------------------------------------------------
def test_coco_batches_carry_boxes_scaled_to_the_network_input(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        dm = DetectionDataModule(annotations=str(coco_dataset(tmp_path)), image_size=SIZE, batch_size=3,
                                 val_fraction=0.0, test_fraction=0.0)
        assert dm.class_names == ["scratch", "dent"] and dm.num_classes == 2
        assert dm.in_chans == 3 and dm.channel_names is None
    assert "RGBA: alpha dropped" in caplog.text  # b.png, converted and reported
    dm.setup("fit")
    batch = eval_batch(dm)
    assert batch["image"].shape == (3, 3, 20, 30) and batch["image"].dtype == torch.float32
    boxes, labels = by_id(batch), by_id(batch, "labels")
    # a.png is 60x40 -> 30x20: x * 0.5, y * 0.5; b.png is 50x30: x * 0.6, y * 2/3.
    np.testing.assert_allclose(boxes["a.png"], [[5.25, 2.625, 15.25, 7.625], [20, 10, 27.5, 19]], rtol=1e-6)
    np.testing.assert_allclose(boxes["b.png"], [[0, 0, 7.2, 6]], rtol=1e-6)
    assert labels["a.png"].tolist() == [0, 1] and labels["b.png"].tolist() == [1]
    assert boxes["c.png"].shape == (0, 4) and labels["c.png"].dtype == np.int64  # the negative
    assert all(b.dtype == torch.float32 for b in batch["boxes"])
    assert batch["orig_size"].tolist() == [[40, 60], [30, 50], [40, 60]]
    np.testing.assert_allclose(dm.train_boxes(), np.concatenate([boxes["a.png"], boxes["b.png"]]), rtol=1e-6)
    assert dm.train_class_counts() == [1, 2]


def test_negatives_are_in_every_split_and_in_training_batches(tmp_path):
    dm = DetectionDataModule(annotations=str(yolo_dataset(tmp_path / "y")), image_size=32, batch_size=4,
                             val_fraction=0.25, test_fraction=0.25)
    dm.setup("fit")
    for split, idx in dm.splits.items():
        has = dm.source.labels[idx]
        assert 0 < has.sum() < len(idx), f"{split} lacks negatives or positives"
    seen = {}
    for batch in dm.train_dataloader():
        assert batch["image"].shape[1:] == (1, 32, 32)  # gray stays one channel
        seen.update({i: (b.shape, lab.shape) for i, b, lab in zip(batch["id"], batch["boxes"], batch["labels"],
                                                                  strict=True)})
    train_ids = {dm.source.ids[i] for i in dm.splits["train"]}
    assert set(seen) == train_ids
    negatives = [i for i in dm.splits["train"] if dm.source.labels[i] == 0]
    assert negatives and all(seen[dm.source.ids[i]] == ((0, 4), (0,)) for i in negatives)


def test_train_boxes_are_the_training_objects_after_the_eval_resize(tmp_path):
    dm = DetectionDataModule(annotations=str(yolo_dataset(tmp_path / "y", size=40)), image_size=[20, 80],
                             val_fraction=0.25, test_fraction=0.25)
    expected = []
    for i in dm.splits["train"]:
        n = int(Path(dm.source.ids[i]).stem[2:])
        if n < 12:  # positives: spot at x = 4 + n, y = 10, 10x10, in a 40x40 image
            x = 4 + n
            expected.append([x * 2, 10 * 0.5, (x + 10) * 2, 20 * 0.5])
    np.testing.assert_allclose(dm.train_boxes(), expected, rtol=1e-5)
    assert dm.train_boxes().dtype == np.float32


def test_augmented_boxes_stay_on_their_objects(tmp_path):
    """Whatever crop/flip/brightness the default augmentation draws, each box still frames the
    bright spot it annotates."""
    dm = DetectionDataModule(annotations=str(yolo_dataset(tmp_path / "y", negatives=0)), image_size=32,
                             augment="default", val_fraction=0.0, test_fraction=0.0, min_visibility=0.9)
    torch.manual_seed(0)
    data = dm.dataset("train")
    kept = 0
    for _ in range(3):
        for i in range(len(data)):
            sample = data[i]
            image = sample["image"][0].numpy()
            for x0, y0, x1, y1 in sample["boxes"].round().int().tolist():
                inside = image[y0:y1, x0:x1]
                assert inside.size and inside.mean() > image.mean() + 0.5  # the bright spot
                kept += 1
    assert kept > 0


# ---- the documented drop rule ------------------------------------------------------------------
def test_boxes_under_min_box_size_after_the_resize_are_dropped_in_training_only():
    image = np.zeros((100, 100, 1), np.float32)
    masks = np.zeros((2, 100, 100), np.uint8)
    masks[0, 10:15, 10:15] = 1
    masks[1, 0:50, 0:50] = 1
    sample = {"image": image, "boxes": np.array([[10, 10, 15, 15], [0, 0, 50, 50]], np.float32),
              "labels": np.array([1, 0]), "masks": masks, "id": "x"}
    train = TrainDetectionTransform(20, [0.0], [1.0], augment="none", min_box_size=2)
    out = train({**sample})
    # 5 px at scale 0.2 is 1 px < min_box_size 2: dropped with its mask; 50 px -> 10 px kept.
    np.testing.assert_allclose(out["boxes"].numpy(), [[0, 0, 10, 10]], atol=1e-4)
    assert out["labels"].tolist() == [0] and out["masks"].shape == (1, 20, 20)
    assert out["masks"].dtype == torch.uint8 and out["masks"][0, :10, :10].all()
    evaluated = EvalDetectionTransform(20, [0.0], [1.0])({**sample})
    np.testing.assert_allclose(evaluated["boxes"].numpy(), [[2, 2, 3, 3], [0, 0, 10, 10]])  # all kept


def test_a_crop_that_pushes_a_box_out_drops_it_by_visibility_and_clips_the_rest():
    crop = compose_with_boxes([A.Crop(0, 0, 30, 40), A.Resize(40, 60)], box_rule(min_box_size=2,
                                                                                   min_visibility=0.3))
    out = crop(image=np.zeros((40, 60, 1), np.float32), labels=np.array([0, 1, 1]), instance=np.arange(3),
               bboxes=np.array([[5, 5, 20, 20],   # inside the crop
                                [25, 10, 58, 38],  # 5 of 33 px wide left inside: 15% < 30%, dropped
                                [20, 0, 40, 10]],  # half inside: clipped at the crop's edge
                               np.float32))
    np.testing.assert_allclose(np.asarray(out["bboxes"]), [[10, 5, 40, 20], [40, 0, 60, 10]], atol=1e-4)
    assert list(out["labels"]) == [0, 1] and list(out["instance"]) == [0, 2]


# ---- instance masks, channels, prediction ----------------------------------------------------------
def test_instance_masks_travel_with_their_boxes(tmp_path):
    dm = DetectionDataModule(annotations=str(coco_dataset(tmp_path)), image_size=SIZE, instance_masks=True,
                             val_fraction=0.0, test_fraction=0.0)
    batch = eval_batch(dm)
    masks = by_id(batch, "masks")
    assert masks["a.png"].shape == (2, 20, 30) and masks["a.png"].dtype == np.uint8
    assert masks["c.png"].shape == (0, 20, 30)
    # Stored mask: columns 10..29, rows 5..14; nearest-neighbour at half size samples stored
    # pixel 2k+1 for output pixel k: columns 5..14, rows 2..6 (the box is y 2.625..7.625).
    rows, cols = np.nonzero(masks["a.png"][0])
    assert (cols.min(), cols.max() + 1, rows.min(), rows.max() + 1) == (5, 15, 2, 7)
    train = next(iter(dm.train_dataloader()))
    assert all(m.shape[0] == b.shape[0] for m, b in zip(train["masks"], train["boxes"], strict=True))


def test_predict_paths_are_negatives_with_their_stored_size(tmp_path):
    new = tmp_path / "new"
    write_image(new / "p.png", 45, 30)
    (new / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    dm = DetectionDataModule(annotations=str(coco_dataset(tmp_path / "d")), image_size=SIZE,
                             predict_paths=[str(new)], val_fraction=0.0, test_fraction=0.0)
    batch = next(iter(dm.predict_dataloader()))
    assert batch["image"].shape == (1, 3, 20, 30) and batch["orig_size"].tolist() == [[30, 45]]
    assert batch["boxes"][0].shape == (0, 4) and [Path(i).name for i in batch["id"]] == ["p.png"]


def test_data_yaml_splits_are_used(tmp_path):
    root = tmp_path / "y"
    for split, n in (("train", 4), ("val", 2), ("test", 2)):
        for i in range(n):
            write_image(root / "images" / split / f"{split}{i}.png", 20, 20)
            (root / "labels" / split).mkdir(parents=True, exist_ok=True)
            (root / "labels" / split / f"{split}{i}.txt").write_text("0 0.5 0.5 0.5 0.5\n" if i else "")
    (root / "data.yaml").write_text(f"path: {root}\ntrain: images/train\nval: images/val\ntest: images/test\n"
                                    "names: [pit]\n")
    dm = DetectionDataModule(annotations=str(root), image_size=16)
    assert {s: sorted(Path(dm.source.ids[i]).stem for i in idx) for s, idx in dm.splits.items()} == {
        "train": ["train0", "train1", "train2", "train3"], "val": ["val0", "val1"], "test": ["test0", "test1"]}


# ---- bad annotations through the datamodule ----------------------------------------------------------
def test_skipped_images_are_listed_in_skipped_files_csv(tmp_path):
    annotations = voc_dataset(tmp_path / "voc")
    write_image(tmp_path / "voc" / "JPEGImages" / "p3.jpg", 60, 40)
    labelimg_xml(annotations / "p3.xml", "p3.jpg", [("scrach", 11, 6, 30, 15, 0, 0)])
    with pytest.raises(DataError, match="p3.xml': object 1 \\('scrach'\\).*did you mean 'scratch'"):
        DetectionDataModule(annotations=str(annotations), class_order=["scratch", "dent"], image_size=16).setup("fit")
    dm = DetectionDataModule(annotations=str(annotations), class_order=["scratch", "dent"], image_size=16,
                             on_bad_annotation="skip", val_fraction=0.0, test_fraction=0.0)
    dm.trainer = cpu_trainer(tmp_path / "run")
    dm.setup("fit")
    with (Path(dm.trainer.log_dir) / "skipped_files.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and rows[0]["path"].endswith("p3.jpg") and "did you mean 'scratch'" in rows[0]["reason"]
    assert sorted(Path(p).name for p in dm.source.paths) == ["p1.jpg", "p2.jpg"]


def test_masks_format_through_the_datamodule(tmp_path):
    root = tmp_path / "m"
    for i in range(4):
        write_image(root / f"x{i}.jpg", 40, 20, mode="L")
        mask = np.zeros((20, 40), np.uint8)
        if i % 2:
            mask[4:8, 8:16] = 255
            mask[12:18, 30:38] = 255
        Image.fromarray(mask).save(root / f"x{i}.png")
    dm = DetectionDataModule(annotations=str(root), class_order=["defect"], image_size=[10, 20],
                             val_fraction=0.0, test_fraction=0.0)
    boxes = by_id(eval_batch(dm))
    np.testing.assert_allclose(boxes["x1.jpg"], [[4, 2, 8, 4], [15, 6, 19, 9]])
    assert boxes["x0.jpg"].shape == (0, 4)


def test_options_are_checked():
    with pytest.raises(DataError, match="on_bad_annotation is 'ignore'"):
        DetectionDataModule(annotations="x.json", on_bad_annotation="ignore")
    with pytest.raises(DataError, match="needs data.init_args.annotations"):
        DetectionDataModule().setup("fit")


def test_lightning_cli_links_the_object_classes_and_channels(tmp_path):
    from core.cli import run_cli

    from .conftest import TINY_ARGS

    cli = run_cli(["--model=core.classification.ClassificationTask", *TINY_ARGS,
                   "--model.init_args.pretrained=false", "--data=core.detection_data.DetectionDataModule",
                   f"--data.init_args.annotations={coco_dataset(tmp_path)}", "--data.init_args.format=coco",
                   "--data.init_args.class_order=[dent, scratch]", "--data.init_args.image_size=16",
                   "--trainer.logger=false"], run=False)
    h = cli.model.hparams
    assert (list(h.class_names), h.num_classes, h.in_chans) == (["dent", "scratch"], 2, 3)
