"""Write classification predictions to ``predictions.csv`` in the run's log directory."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter

from core.atomic import write_atomic
from core.distributed import gather_objects, rank_zero_dir


class ClassificationCSVWriter(BasePredictionWriter):
    """One row per sample: id, probability per class, argmax class, and the operating-point
    decision when the task has one."""

    def __init__(self, filename: str = "predictions.csv") -> None:
        super().__init__(write_interval="epoch")
        self.filename = filename
        self.path: Path | None = None

    def write_on_epoch_end(self, trainer: Trainer, pl_module: LightningModule,
                           predictions: list[Any], batch_indices: Any) -> None:
        local = [b for group in predictions for b in (group if isinstance(group, list) else [group])]
        indices = _flat_indices(batch_indices, local)
        # Under DDP each rank predicted its own share: rank 0 writes all of them, once, in the
        # dataset's order (a rank's share is every world-size-th sample).
        shares = gather_objects((local, indices))
        batches = [b for share, _ in shares for b in share]
        folder = rank_zero_dir(trainer)
        if not batches or folder is None:
            return
        order = [i for _, share in shares for i in share] if all(s[1] for s in shares if s[0]) else None
        self.path = write_atomic(folder / self.filename,
                                 lambda tmp: self._write(tmp, batches, order))

    def _write(self, path: Path, batches: list[dict[str, Any]], order: list[int] | None) -> None:
        names = batches[0]["class_names"]
        with_decision = "decision" in batches[0]
        rows = []
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
                rows.append(row)
        if order is not None and len(order) == len(rows):
            rows = [row for _, row in sorted(zip(order, rows, strict=True), key=lambda pair: pair[0])]
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            header = ["id", *[f"prob_{n}" for n in names], "predicted_class"]
            writer.writerow(header + (["score", "threshold", "decision"] if with_decision else []))
            writer.writerows(rows)


def _flat_indices(batch_indices: Any, batches: list[Any]) -> list[int]:
    """The dataset index of every predicted sample, in prediction order; [] when Lightning did
    not track them (one dataloader: a list of index lists, one per batch)."""
    if not batch_indices:
        return []
    groups = batch_indices[0] if batch_indices and isinstance(batch_indices[0], list) \
        and batch_indices[0] and isinstance(batch_indices[0][0], list) else batch_indices
    if len(groups) != len(batches) or not all(isinstance(g, list) for g in groups):
        return []
    return [int(i) for group in groups for i in group]
