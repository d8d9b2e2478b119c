"""Write classification predictions to ``predictions.csv`` in the run's log directory."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter


class ClassificationCSVWriter(BasePredictionWriter):
    """One row per sample: id, probability per class, argmax class, and the operating-point
    decision when the task has one."""

    def __init__(self, filename: str = "predictions.csv") -> None:
        super().__init__(write_interval="epoch")
        self.filename = filename
        self.path: Path | None = None

    def write_on_epoch_end(self, trainer: Trainer, pl_module: LightningModule,
                           predictions: list[Any], batch_indices: Any) -> None:
        batches = [b for group in predictions for b in (group if isinstance(group, list) else [group])]
        if not batches or trainer.log_dir is None:
            return
        names = batches[0]["class_names"]
        with_decision = "decision" in batches[0]
        self.path = Path(trainer.log_dir) / self.filename
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("w", newline="") as f:
            writer = csv.writer(f)
            header = ["id", *[f"prob_{n}" for n in names], "predicted_class"]
            writer.writerow(header + (["score", "threshold", "decision"] if with_decision else []))
            for batch in batches:
                for i, probs in enumerate(batch["probs"].tolist()):
                    if batch.get("multilabel"):
                        predicted = ";".join(n for n, p in zip(names, probs, strict=True) if p >= 0.5)
                    else:
                        predicted = names[max(range(len(probs)), key=probs.__getitem__)]
                    row = [batch["id"][i] if batch["id"] else "", *(f"{p:.6f}" for p in probs), predicted]
                    if with_decision:
                        row += [f"{float(batch['score'][i]):.6f}", f"{batch['threshold']:.6f}",
                                "positive" if bool(batch["decision"][i]) else "negative"]
                    writer.writerow(row)
