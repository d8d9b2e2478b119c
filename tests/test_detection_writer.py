"""``predict`` of a detector writes detections.csv/.json with boxes in stored-image pixels."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from core.detection_writer import DetectionFileWriter
from core.errors import DataError


class _Trainer:
    world_size = 1

    def __init__(self, log_dir):
        self.log_dir = str(log_dir)


def test_boxes_are_scaled_to_each_images_stored_size_and_every_image_has_a_row(tmp_path):
    writer = DetectionFileWriter()
    trainer = _Trainer(tmp_path)
    writer.on_predict_start(trainer, None)
    # Network input 32x32; image a.png is stored 64 wide x 48 high, b.png 32x32.
    batch = {"image": torch.zeros(2, 1, 32, 32), "orig_size": torch.tensor([[48, 64], [32, 32]])}
    prediction = {
        "id": ["a.png", "b.png"], "class_names": ["scratch", "dent"], "threshold": 0.4,
        "boxes": [torch.tensor([[4.0, 8.0, 12.0, 16.0], [0.0, 0.0, 2.0, 2.0]]), torch.zeros(0, 4)],
        "scores": [torch.tensor([0.9, 0.2]), torch.zeros(0)],
        "labels": [torch.tensor([1, 0]), torch.zeros(0, dtype=torch.long)],
        "kept": [torch.tensor([True, False]), torch.zeros(0, dtype=torch.bool)],
    }
    writer.write_on_batch_end(trainer, None, prediction, None, batch, 0, 0)
    writer.on_predict_end(trainer, None)
    with (tmp_path / "detections.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["id", "x0", "y0", "x1", "y1", "label", "score", "kept", "threshold"]
    # x scales by 64/32 = 2, y by 48/32 = 1.5.
    assert [float(rows[0][k]) for k in ("x0", "y0", "x1", "y1")] == [8.0, 12.0, 24.0, 24.0]
    assert rows[0]["label"] == "dent" and rows[0]["kept"] == "1" and rows[1]["kept"] == "0"
    assert rows[2]["id"] == "b.png" and rows[2]["x0"] == "" and rows[2]["threshold"] == "0.400000"
    images = json.loads((tmp_path / "detections.json").read_text())["images"]
    assert [i["id"] for i in images] == ["a.png", "b.png"] and images[0]["size"] == [48, 64]
    assert images[1]["detections"] == []
    assert not list(tmp_path.glob(".*partial*"))


def test_several_processes_are_refused(tmp_path):
    trainer = _Trainer(tmp_path)
    trainer.world_size = 2
    with pytest.raises(DataError, match="detections.csv is written by one process"):
        DetectionFileWriter().on_predict_start(trainer, None)


def test_detection_tasks_write_detection_files():
    from core.detection import DetectionTask

    from .conftest import TINY

    assert isinstance(DetectionTask(**TINY, num_classes=2).prediction_writer(), DetectionFileWriter)
