"""The core detection task: torchvision detectors on the ConvNeXt pyramid, metrics, operating point."""

import json
import logging

import numpy as np
import pytest
import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, Dataset

from core import anchors
from core.detection import DetectionTask
from core.detection_metrics import (
    DetectionMAP,
    image_level_rates,
    match_image,
    object_rates,
    threshold_for_object_recall,
)
from core.detectors import InputTransform
from core.recipe import recipe_param_groups

from .conftest import TINY
from .conftest import cpu_trainer as trainer

# 32 FPN channels: FCOS's head needs a multiple of 32 (GroupNorm), and it keeps CPU tests fast.
SMALL = {**TINY, "fpn_channels": 32, "drop_path_rate": 0.0}
SIZE = 64


def rectangles(n: int = 6, size: int = SIZE, channels: int = 3, seed: int = 0,
               empty_every: int = 3, masks: bool = False) -> list[dict]:
    """Noise images with bright rectangles of two classes (wide = 0, tall = 1); every
    ``empty_every``-th image has none (a negative sample)."""
    g = torch.Generator().manual_seed(seed)
    samples = []
    for i in range(n):
        image = 0.3 * torch.randn(channels, size, size, generator=g)
        boxes, labels = [], []
        if i % empty_every != empty_every - 1:
            for k in range(1 + i % 2):
                label = (i + k) % 2
                w, h = (20, 10) if label == 0 else (10, 20)
                x0 = int(torch.randint(2, size - w - 2, (1,), generator=g))
                y0 = int(torch.randint(2, size - h - 2, (1,), generator=g)) if k == 0 else (
                    size - h - 2 if boxes[0][1] < size / 2 - h else 2)
                image[:, y0:y0 + h, x0:x0 + w] += 2.0
                boxes.append([x0, y0, x0 + w, y0 + h])
                labels.append(label)
        sample = {"image": image, "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                  "labels": torch.tensor(labels, dtype=torch.long), "id": f"img_{i}"}
        if masks:
            m = torch.zeros(len(boxes), size, size, dtype=torch.uint8)
            for j, (x0, y0, x1, y1) in enumerate(boxes):
                m[j, y0:y1, x0:x1] = 1
            sample["masks"] = m
        samples.append(sample)
    return samples


def collate(samples: list[dict]) -> dict:
    batch = {"image": torch.stack([s["image"] for s in samples]),
             "boxes": [s["boxes"] for s in samples], "labels": [s["labels"] for s in samples],
             "id": [s["id"] for s in samples]}
    if "masks" in samples[0]:
        batch["masks"] = [s["masks"] for s in samples]
    return batch


class ListDataset(Dataset):
    def __init__(self, samples):
        self.samples = samples

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        return self.samples[i]


class BoxData(LightningDataModule):
    """The datamodule surface the task reads: loaders and ``train_boxes()``."""

    def __init__(self, train, val, test):
        super().__init__()
        self.splits = {"train": train, "val": val, "test": test}
        self.boxes_asked = 0

    def train_boxes(self) -> np.ndarray:
        self.boxes_asked += 1
        return torch.cat([s["boxes"] for s in self.splits["train"]]).numpy()

    def _loader(self, split, shuffle=False):
        return DataLoader(ListDataset(self.splits[split]), batch_size=2, shuffle=shuffle,
                          collate_fn=collate)

    def train_dataloader(self):
        return self._loader("train", shuffle=True)

    def val_dataloader(self):
        return self._loader("val")

    def test_dataloader(self):
        return self._loader("test")


def _max(t: torch.Tensor) -> float:
    return float(t.max()) if t.numel() else 0.0


def _min(t: torch.Tensor) -> float:
    return float(t.min()) if t.numel() else 0.0


def train_losses(task: DetectionTask, batch: dict) -> dict:
    task.train()
    return task(batch["image"], task._targets(batch))


# ---- every detector builds, trains a step and detects ---------------------------------------
@pytest.mark.parametrize("kind", ["fcos", "retinanet", "faster_rcnn", "mask_rcnn"])
def test_each_detector_trains_a_step_and_detects(kind):
    torch.manual_seed(0)
    task = DetectionTask(detector=kind, num_classes=2, class_names=["wide", "tall"], **SMALL)
    batch = collate(rectangles(3, masks=kind == "mask_rcnn"))  # the third image has no box
    assert len(batch["boxes"][2]) == 0
    losses = train_losses(task, batch)
    loss = sum(losses.values())
    assert torch.isfinite(loss)
    loss.backward()
    assert task.backbone.model.stem[0].weight.grad is not None  # the ConvNeXt is trained
    task.eval()
    with torch.no_grad():
        out = task(batch["image"])
    assert len(out) == 3
    for det in out:
        assert det["boxes"].shape[1] == 4 and len(det["scores"]) == len(det["labels"])
        assert _min(det["labels"]) >= 0 and _max(det["labels"]) < 2
        assert _max(det["boxes"]) <= SIZE + 1e-3
    if kind == "mask_rcnn":
        assert out[0]["masks"].shape[1:] == (1, SIZE, SIZE)


def test_fcos_loss_decreases_on_a_fixed_batch():
    torch.manual_seed(0)
    task = DetectionTask(num_classes=2, **SMALL)
    batch = collate(rectangles(2, empty_every=2))  # one image with a box, one without
    optimizer = torch.optim.AdamW(task.parameters(), lr=2e-3)
    losses = []
    for _ in range(30):
        loss = sum(train_losses(task, batch).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3]), losses


@pytest.mark.parametrize("in_chans", [1, 6])
def test_any_channel_count(in_chans):
    task = DetectionTask(num_classes=2, in_chans=in_chans, **SMALL)
    assert task.backbone.model.stem[0].in_channels == in_chans
    batch = collate(rectangles(2, channels=in_chans))
    assert torch.isfinite(sum(train_losses(task, batch).values()))
    task.eval()
    with torch.no_grad():
        assert len(task(batch["image"])) == 2


def test_images_without_boxes_train():
    torch.manual_seed(0)
    task = DetectionTask(detector="faster_rcnn", num_classes=2, **SMALL)
    batch = collate(rectangles(2, empty_every=1))  # no image has a box
    assert all(len(b) == 0 for b in batch["boxes"])
    losses = train_losses(task, batch)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()


def test_one_optimizer_group_per_parameter_and_full_lr_for_fpn_and_heads():
    task = DetectionTask(detector="retinanet", num_classes=2, **SMALL)
    groups = recipe_param_groups(task.backbone.model, 1e-3, 0.05, 0.8, extra=task.head_modules())
    grouped = [id(p) for g in groups for p in g["params"]]
    assert len(grouped) == len(set(grouped))
    assert set(grouped) == {id(p) for p in task.parameters() if p.requires_grad}
    fpn = {id(p) for p in task.detector.backbone.fpn.parameters()}
    assert all(g["lr"] == 1e-3 for g in groups if fpn & {id(p) for p in g["params"]})
    assert task.backbone is task.detector.backbone.body  # one module, one set of weights


def test_focal_settings_at_torchvision_defaults_give_torchvision_loss():
    batch = collate(rectangles(3))
    for kind in ("fcos", "retinanet"):
        torch.manual_seed(0)
        plain = DetectionTask(detector=kind, num_classes=2, **SMALL)
        focal = DetectionTask(detector=kind, num_classes=2, focal_alpha=0.25, focal_gamma=2.0, **SMALL)
        focal.load_state_dict(plain.state_dict())
        a, b = train_losses(plain, batch), train_losses(focal, batch)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.allclose(a[key], b[key], atol=1e-5), (kind, key)
        other = DetectionTask(detector=kind, num_classes=2, focal_gamma=0.0, **SMALL)
        other.load_state_dict(plain.state_dict())
        assert not torch.allclose(train_losses(other, batch)["classification"], a["classification"])


def test_input_size_is_kept_unless_min_size_is_given():
    images = [torch.randn(3, 64, 80)]
    assert InputTransform(3, None, None).eval()(images)[0].image_sizes == [(64, 80)]
    assert InputTransform(3, 128, 400).eval()(images)[0].image_sizes == [(128, 160)]
    task = DetectionTask(num_classes=2, min_size=128, max_size=256, **SMALL).eval()
    with torch.no_grad():
        det = task(torch.randn(1, 3, 64, 80))[0]
    # Detections come back in the input's pixels.
    assert _max(det["boxes"][:, [0, 2]]) <= 80 + 1e-3
    assert _max(det["boxes"][:, [1, 3]]) <= 64 + 1e-3


@pytest.mark.parametrize(("options", "match"), [
    ({"detector": "yolo"}, "unknown detector 'yolo'"),
    ({"anchor_sizes": [[8]] * 5}, "anchor-free"),
    ({"detector": "faster_rcnn", "focal_gamma": 1.0}, "no focal loss"),
    ({"detector": "retinanet", "anchor_sizes": [[8], [16]]}, "2 levels"),
    ({"detector": "retinanet", "anchor_sizes": [[8], [16, 20], [32], [64], [128]]}, "same"),
    ({"fpn_channels": 48}, "multiple of 32"),
    ({"max_size": 512}, "give min_size too"),
    ({"target_recall": 1.5}, "target_recall=1.5"),
])
def test_bad_options_name_the_value_and_the_fix(options, match):
    with pytest.raises(ValueError, match=match):
        DetectionTask(num_classes=2, **{**SMALL, **options})


def test_mask_rcnn_without_masks_is_a_clear_error():
    task = DetectionTask(detector="mask_rcnn", num_classes=2, **SMALL)
    with pytest.raises(ValueError, match="needs instance masks"):
        task._targets(collate(rectangles(2)))


# ---- anchors from the training boxes ---------------------------------------------------------
def test_anchor_sizes_and_ratios_derived_by_hand():
    # Squares of side 1..101 px: sides up to 45 go to level 0 (log2(45/32) rounds to 0), 46..90
    # to level 1 (log2(46/32) = 0.52), 91..101 to level 2 (log2(91/32) = 1.51).
    side = np.arange(1, 102, dtype=float)
    squares = np.stack([np.zeros_like(side), np.zeros_like(side), side, side], axis=1)
    assert anchors.box_levels(squares, 5).tolist() == [0] * 45 + [1] * 45 + [2] * 11
    # One size per level: the median of each level's sides; levels 3 and 4 keep 256 and 512.
    assert anchors.derive_anchor_sizes(squares, 5, 1) == [[23.0], [68.0], [96.0], [256.0], [512.0]]
    # Three per level: quantiles 1/6, 1/2, 5/6 of sides 1..45 (linear interpolation: 1 + 44q).
    level0 = anchors.derive_anchor_sizes(squares, 5, 3)[0]
    assert level0 == [round(1 + 44 / 6), 23.0, round(1 + 44 * 5 / 6)] == [8.0, 23.0, 38.0]
    # Ratios h/w: 1/6, 1/2, 5/6 quantiles of 0.5 (x2), 1 (x2), 2 (x2).
    wide, square, tall = [0, 0, 20, 10], [0, 0, 10, 10], [0, 0, 10, 20]
    boxes = np.array([wide, wide, square, square, tall, tall], dtype=float)
    assert anchors.derive_aspect_ratios(boxes) == [0.5, 1.0, 2.0]
    assert anchors.derive_aspect_ratios(np.array([square] * 4, dtype=float)) == [1.0, 1.0, 1.0]
    assert anchors.default_anchor_sizes(5, 3)[0] == [32.0, 40.0, 50.0]  # torchvision's RetinaNet
    with pytest.raises(ValueError, match="no training box"):
        anchors.derive_aspect_ratios(np.zeros((2, 4)))


class OracleScores(DetectionTask):
    """The task with metrics fed known detections: each true box at ``hit`` plus one false box
    per image at ``miss``, so the operating point is known whatever a few training steps did
    to the (real, still run) model."""

    hit, miss = 0.8, 0.3

    def update_metrics(self, stage, outputs, target):
        known = []
        for t in target:
            false_box = torch.tensor([[0.0, 0.0, 4.0, 4.0]])
            known.append({"boxes": torch.cat([t["boxes"], false_box]),
                          "scores": torch.tensor([self.hit] * len(t["boxes"]) + [self.miss]),
                          "labels": torch.cat([t["labels"], torch.tensor([0])])})
        super().update_metrics(stage, known, target)


def test_fit_derives_anchors_keeps_ema_and_threshold_and_test_writes_the_report(tmp_path, caplog):
    """One small run through the Trainer: anchors from train_boxes(), EMA, the operating point
    stored in the checkpoint, then a test of that checkpoint by a task configured without
    anchors, writing metrics.json and detections.png."""
    torch.manual_seed(0)
    data = BoxData(rectangles(4, seed=1), rectangles(4, seed=2), rectangles(4, seed=3))
    task = OracleScores(detector="retinanet", num_classes=2, class_names=["wide", "tall"],
                        ema_decay=0.5, warmup_epochs=0.0, **SMALL)
    default_sizes = task.anchors.sizes
    fit = trainer(tmp_path, max_epochs=2, logger=CSVLogger(tmp_path), enable_checkpointing=True,
                  num_sanity_val_steps=0)
    with caplog.at_level(logging.INFO, logger="core.detection"):
        fit.fit(task, datamodule=data)
    assert data.boxes_asked == 1
    boxes = data.train_boxes()
    expected = anchors.derive_anchor_sizes(boxes, 5, 3)
    assert task.hparams.anchor_sizes == expected
    assert task.hparams.aspect_ratios == anchors.derive_aspect_ratios(boxes)
    assert [list(s) for s in task.anchors.sizes] == expected != default_sizes
    assert any(f"anchors derived from {len(boxes)} training boxes" in r.message
               for r in caplog.records)
    # Chosen on validation: every object is found at 0.8, the false detections score 0.3.
    assert float(task.threshold) == pytest.approx(OracleScores.hit)
    best = fit.checkpoint_callback.best_model_path
    assert "best-" in best and fit.checkpoint_callback.monitor == "val/map_50"
    saved = torch.load(best, weights_only=False)
    assert saved["hyper_parameters"]["anchor_sizes"] == expected
    assert "detector.backbone.body.model.stem.0.weight" in saved["state_dict"]
    reloaded = OracleScores.load_from_checkpoint(best)  # anchors come back as hyperparameters
    assert [list(s) for s in reloaded.anchors.sizes] == expected
    assert float(reloaded.threshold) == pytest.approx(OracleScores.hit)

    fresh = OracleScores(detector="retinanet", num_classes=2, class_names=["wide", "tall"], **SMALL)
    assert torch.isnan(fresh.threshold)
    test = trainer(tmp_path, logger=CSVLogger(tmp_path, version="test"))
    values = test.test(fresh, datamodule=data, ckpt_path=best)[0]
    assert [list(s) for s in fresh.anchors.sizes] == expected
    assert float(fresh.threshold) == pytest.approx(float(saved["state_dict"]["threshold"]))
    assert values["test/map_50"] == pytest.approx(1.0)
    assert values["test/op_threshold"] == pytest.approx(OracleScores.hit)
    assert values["test/op_recall"] == 1.0 and values["test/op_precision"] == 1.0
    assert values["test/op_image_recall"] == 1.0
    assert values["test/op_image_false_positive_rate"] == 0.0
    assert "test/map_75" in values and "test/ap_wide" in values
    report = json.loads((tmp_path / "lightning_logs" / "test" / "metrics.json").read_text())
    assert report["task"] == "detection" and report["detector"] == "retinanet"
    assert set(report["per_class_ap"]) == {"wide", "tall"}
    assert report["checkpoint"].endswith(".ckpt")
    assert report["operating_point"]["op_threshold"] == pytest.approx(float(fresh.threshold))
    assert report["anchors"]["sizes"] == expected
    png = tmp_path / "lightning_logs" / "test" / "detections.png"
    assert png.stat().st_size > 1000


def test_the_sanity_check_neither_chooses_the_threshold_nor_warns(tmp_path, caplog):
    """Lightning validates two batches before training: an untrained model there must not set
    the operating point or log 'no validation object was detected' (it read as a fault)."""
    data = BoxData(rectangles(4, seed=1), rectangles(4, seed=2), rectangles(4, seed=3))
    task = OracleScores(detector="retinanet", num_classes=2, class_names=["wide", "tall"],
                        warmup_epochs=0.0, **SMALL)
    fit = trainer(tmp_path, max_epochs=1, limit_train_batches=0, num_sanity_val_steps=1)
    with caplog.at_level(logging.INFO, logger="core.detection"):
        fit.fit(task, datamodule=data)
    assert torch.isnan(task.threshold)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_fcos_fit_and_predict_with_a_datamodule_without_train_boxes(tmp_path):
    torch.manual_seed(0)
    samples = rectangles(2)  # one batch: fast_dev_run runs one of each loop
    train = DataLoader(ListDataset(samples), batch_size=2, collate_fn=collate)
    task = DetectionTask(num_classes=2, **SMALL)
    run = trainer(tmp_path, fast_dev_run=True)
    run.fit(task, train_dataloaders=train, val_dataloaders=train)
    out = run.predict(task, dataloaders=train)
    assert [i for batch in out for i in batch["id"]] == [s["id"] for s in samples]
    first = out[0]
    assert len(first["boxes"]) == len(first["scores"]) == len(first["labels"]) == 2
    assert first["kept"][0].tolist() == (first["scores"][0] >= first["threshold"]).tolist()


# ---- metrics and the operating point by hand ---------------------------------------------
def test_map_50_is_one_when_predictions_equal_targets():
    metric = DetectionMAP(["wide", "tall"], per_class=True)
    targets = [{"boxes": torch.tensor([[10.0, 10, 30, 20], [40, 5, 50, 25]]), "labels": torch.tensor([0, 1])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    preds = [{**t, "scores": torch.ones(len(t["labels"]))} for t in targets]
    metric.update(preds, targets)
    result = metric.compute()
    assert float(result["map_50"]) == 1.0 and float(result["map"]) == 1.0
    assert float(result["ap_wide"]) == 1.0 and float(result["ap_tall"]) == 1.0
    assert all(v.numel() == 1 for v in result.values())


def _box(x, y, size=10):
    return [x, y, x + size, y + size]


def test_operating_threshold_from_hand_made_predictions():
    # Image A: two true boxes of class 0. Detections: 0.9 on box 1, 0.8 a duplicate of box 1
    # (box already taken: a false detection), 0.6 on box 2 but class 1 (no match), 0.3 on box 2.
    # Image B: one true box; 0.7 on it, 0.5 elsewhere. Image C: no box; a 0.4 detection.
    images = [
        ([_box(0, 0), _box(30, 30)], [0, 0],
         [_box(0, 0), _box(1, 1), _box(30, 30), _box(31, 30)], [0.9, 0.8, 0.6, 0.3], [0, 0, 1, 0]),
        ([_box(10, 10)], [1], [_box(10, 10), _box(40, 40)], [0.7, 0.5], [1, 1]),
        ([], [], [_box(5, 5)], [0.4], [0]),
    ]
    true_scores, det_scores, det_match = [], [], []
    for tb, tl, pb, ps, pl in images:
        t, m = match_image(torch.tensor(pb, dtype=torch.float32), torch.tensor(ps),
                           torch.tensor(pl), torch.tensor(tb, dtype=torch.float32).reshape(-1, 4),
                           torch.tensor(tl, dtype=torch.long))
        true_scores.append(t)
        det_scores.append(torch.tensor(ps))
        det_match.append(m)
    true_scores, det_scores, det_match = map(torch.cat, (true_scores, det_scores, det_match))
    # Box 1 found at 0.9, box 2 at 0.3 (the 0.6 detection has the wrong class), B's box at 0.7.
    assert true_scores.tolist() == pytest.approx([0.9, 0.3, 0.7])
    assert det_match.tolist() == [True, False, False, True, True, False, False]
    # Recall 2/3 needs the 2nd-highest found score: 0.7; recall 0.9 needs all three: 0.3.
    assert threshold_for_object_recall(true_scores, 2 / 3) == (pytest.approx(0.7), True)
    assert threshold_for_object_recall(true_scores, 0.9) == (pytest.approx(0.3), True)
    rates = object_rates(true_scores, det_scores, det_match, 0.7)
    # Kept: 0.9 (hit), 0.8 (duplicate), 0.7 (hit): recall 2/3, precision 2/3.
    assert rates["recall"] == pytest.approx(2 / 3) and rates["precision"] == pytest.approx(2 / 3)
    # A box no detection reaches caps the recall: the lowest found score, target not reached.
    missed = torch.cat([true_scores, torch.tensor([float("-inf")])])
    assert threshold_for_object_recall(missed, 0.9) == (pytest.approx(0.3), False)


def test_image_level_rates_by_hand():
    def det(*scores):
        return {"boxes": torch.zeros(len(scores), 4), "scores": torch.tensor(scores, dtype=torch.float32),
                "labels": torch.zeros(len(scores), dtype=torch.long)}

    def truth(n):
        return {"boxes": torch.zeros(n, 4), "labels": torch.zeros(n, dtype=torch.long)}

    preds = [det(0.9, 0.2), det(0.4), det(), det(0.6), det(0.1), det()]
    targets = [truth(1), truth(2), truth(1), truth(0), truth(0), truth(0)]
    rates = image_level_rates(preds, targets, threshold=0.5)
    # Images with objects: 0.9 flagged, 0.4 and none missed -> recall 1/3.
    # Images without: 0.6 flagged, 0.1 and none pass -> false-positive (false-reject) rate 1/3.
    assert rates["image_recall"] == pytest.approx(1 / 3)
    assert rates["image_false_positive_rate"] == pytest.approx(1 / 3)
    assert (rates["tp"], rates["fn"], rates["fp"], rates["tn"]) == (1, 2, 1, 2)
    assert image_level_rates(preds, targets, threshold=0.35)["image_recall"] == pytest.approx(2 / 3)
