"""Write ``predict`` detections to ``detections.csv`` and ``detections.json`` in the run's folder."""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter

from core.atomic import write_atomic
from core.distributed import require_one_process

log = logging.getLogger(__name__)

BOX_COLUMNS = ("x0", "y0", "x1", "y1", "label", "score", "kept", "threshold")


class DetectionFileWriter(BasePredictionWriter):
    """``predict`` detections as ``detections.csv`` and ``detections.json``, boxes in pixels of
    the stored image (predicted boxes scaled from the network input by each image's
    ``orig_size``).

    ``detections.csv``: one row per detection above the model's ``score_thresh``, columns
    :attr:`key_columns` then ``x0, y0, x1, y1, label, score, kept, threshold`` (``kept``: the
    score reaches the operating threshold); an image without detections has one row with empty
    box, label and score, so every image appears. ``detections.json``: one entry per image with
    the same keys, ``size`` ([rows, columns]) and a list of ``detections``. Both files are written
    under temporary names and renamed when complete. A domain names its images differently by
    overriding :attr:`key_columns` and :meth:`image_keys`.

    Args:
        stem: file name stem of the two files.
    """

    key_columns: tuple[str, ...] = ("id",)

    def __init__(self, stem: str = "detections") -> None:
        super().__init__(write_interval="batch")
        self.stem = stem
        self.images: list[dict[str, Any]] = []

    def image_keys(self, batch: dict[str, Any], prediction: dict[str, Any], i: int) -> dict[str, Any]:
        """The :attr:`key_columns` values naming image ``i`` of a batch."""
        return {"id": str(prediction["id"][i]) if prediction.get("id") else str(i)}

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # The two files list every image of the run: one process must see them all.
        require_one_process(trainer, f"{self.stem}.csv")
        self.images = []

    def write_on_batch_end(self, trainer: Trainer, pl_module: LightningModule, prediction: Any,
                           batch_indices: Sequence[int] | None, batch: Any, batch_idx: int,
                           dataloader_idx: int) -> None:
        height, width = batch["image"].shape[-2:]
        names, threshold = prediction["class_names"], float(prediction["threshold"])
        for i, boxes in enumerate(prediction["boxes"]):
            rows, cols = ([int(v) for v in batch["orig_size"][i]] if "orig_size" in batch
                          else [int(height), int(width)])
            scale = torch.tensor([cols / width, rows / height] * 2)
            detections = [
                {"box": [round(float(v), 2) for v in box], "label": names[int(label)],
                 "score": round(float(score), 5), "kept": bool(kept)}
                for box, label, score, kept in zip((boxes * scale).tolist(), prediction["labels"][i].tolist(),
                                                   prediction["scores"][i].tolist(),
                                                   prediction["kept"][i].tolist(), strict=True)]
            self.images.append({**self.image_keys(batch, prediction, i), "size": [rows, cols],
                                "threshold": threshold, "detections": detections})

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.images or trainer.log_dir is None:
            return
        out = Path(trainer.log_dir)
        write_atomic(out / f"{self.stem}.csv", self._write_csv)
        write_atomic(out / f"{self.stem}.json",
                     lambda tmp: tmp.write_text(json.dumps({"images": self.images}, indent=1)))
        kept = sum(d["kept"] for image in self.images for d in image["detections"])
        log.info("wrote detections of %d image(s) (%d kept at the operating threshold) to %s",
                 len(self.images), kept, out / f"{self.stem}.csv")

    def _write_csv(self, tmp: Path) -> None:
        with tmp.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow((*self.key_columns, *BOX_COLUMNS))
            for image in self.images:
                key = [image[k] for k in self.key_columns]
                if not image["detections"]:
                    writer.writerow([*key, "", "", "", "", "", "", "", f"{image['threshold']:.6f}"])
                for d in image["detections"]:
                    writer.writerow([*key, *d["box"], d["label"], f"{d['score']:.5f}", int(d["kept"]),
                                     f"{image['threshold']:.6f}"])
