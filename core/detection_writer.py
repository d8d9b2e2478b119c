"""Write ``predict`` detections to ``detections.csv`` and ``detections.json`` in the run's folder
(with mask_rcnn's instance masks as COCO RLE in the JSON)."""

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
from torch import Tensor

from core.atomic import write_atomic
from core.coco_rle import segmentation
from core.distributed import require_one_process

log = logging.getLogger(__name__)

BOX_COLUMNS = ("x0", "y0", "x1", "y1", "label", "score", "kept", "threshold")


def mask_outputs(preds: list[dict[str, Tensor]]) -> dict[str, list[Tensor]]:
    """The ``masks`` entry a detection ``predict_step`` adds for :class:`DetectionFileWriter`:
    per image the instance-mask probabilities ``(N, H, W)`` at the network-input size, on the
    CPU; empty for detectors without masks."""
    if not preds or "masks" not in preds[0]:
        return {}
    return {"masks": [p["masks"].detach().float().cpu().reshape(-1, *p["masks"].shape[-2:])
                      for p in preds]}


class DetectionFileWriter(BasePredictionWriter):
    """``predict`` detections as ``detections.csv`` and ``detections.json``, boxes in pixels of
    the stored image (predicted boxes scaled from the network input by each image's
    ``orig_size``).

    ``detections.csv``: one row per detection above the model's ``score_thresh``, columns
    :attr:`key_columns` then ``x0, y0, x1, y1, label, score, kept, threshold`` (``kept``: the
    score reaches the operating threshold); an image without detections has one row with empty
    box, label and score, so every image appears. ``detections.json``: one entry per image with
    the same keys, ``size`` ([rows, columns]) and a list of ``detections`` (``box``, ``label``,
    ``score``, ``kept``). When the prediction carries ``masks`` (mask_rcnn, see
    :func:`mask_outputs`), each detection also has ``segmentation``, its instance mask in the
    stored image's pixels as an uncompressed COCO RLE, and ``area``, its pixel count, by the one
    policy of :func:`core.coco_rle.segmentation` (probabilities resized to the stored size, then
    > 0.5) that the torch-free bundle predictor uses too. The CSV holds boxes only. Both files are
    written under temporary names and renamed when complete. A domain names its images
    differently by overriding :attr:`key_columns` and :meth:`image_keys`.

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
        masks = prediction.get("masks")
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
            if masks is not None:
                probs = masks[i].numpy()  # float32 on the CPU (mask_outputs)
                for d, p in zip(detections, probs, strict=True):
                    d["segmentation"], d["area"] = segmentation(p, (rows, cols))
            self.images.append({**self.image_keys(batch, prediction, i), "size": [rows, cols],
                                "threshold": threshold, "detections": detections})
        if masks is not None:
            # Lightning keeps every step's return value for `return_predictions`; masks at the
            # network size are large, and their RLE is already kept.
            prediction["masks"] = None

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
