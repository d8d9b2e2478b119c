"""What a run prints: a Rich progress bar in a terminal, one line per epoch anywhere else."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar


class EpochSummary(Callback):
    """One line per training epoch: epoch, wall time, mean train loss, the monitored metric.

    Written where no progress bar is drawn (``nohup``, CI, ``tee`` into a file, or
    ``enable_progress_bar: false``), so long runs still show they are alive and how they do.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream
        self._start = 0.0
        self._loss_sum = 0.0
        self._samples = 0
        self._best: float | None = None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # A resumed run starts from the best score its checkpoint callback restored. (That
        # callback updates after this one in each epoch, so it is not read later.)
        callback = trainer.checkpoint_callback
        score = getattr(callback, "best_model_score", None)
        if score is not None and getattr(callback, "monitor", None) == getattr(pl_module, "monitor", None):
            self._best = float(score)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start, self._loss_sum, self._samples = time.monotonic(), 0.0, 0

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is not None:
            # Weighted by batch size, as Lightning averages train/loss_epoch in metrics.csv.
            images = batch.get("image") if isinstance(batch, dict) else None
            size = len(images) if images is not None else 1
            self._loss_sum += float(loss) * size
            self._samples += size

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        total = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        parts = [f"epoch {trainer.current_epoch + 1}{total}",
                 f"{time.monotonic() - self._start:.1f}s"]
        if self._samples:
            parts.append(f"train/loss {self._loss_sum / self._samples:.4f}")
        monitor = getattr(pl_module, "monitor", None)
        value = trainer.callback_metrics.get(monitor) if monitor else None
        if value is not None:
            value = float(value)
            better = max if getattr(pl_module, "monitor_mode", "min") == "max" else min
            self._best = value if self._best is None else better(self._best, value)
            # A task that monitors its training loss (pretraining) gets "best" only, not the loss twice.
            shown = "" if monitor == "train/loss" and self._samples else f"{monitor} {value:.4f}  "
            parts.append(f"{shown}best {self._best:.4f}")
        print("  ".join(parts), file=self.stream or sys.stdout, flush=True)


def progress_settings(enable_progress_bar: bool | None, callbacks: list[Callback],
                      interactive: bool) -> tuple[bool, list[Callback]]:
    """``enable_progress_bar`` and the callbacks to add for how the output is watched.

    A user's own progress bar callback is kept as it is. Otherwise a terminal gets the Rich
    bar; when the bar is off or nobody watches a terminal (Rich would draw nothing, tqdm would
    flood the log with carriage returns) each epoch prints one summary line instead.
    """
    if any(isinstance(c, ProgressBar) for c in callbacks):
        return enable_progress_bar is not False, []
    if enable_progress_bar is not False and interactive:
        return True, [RichProgressBar()]
    return False, [EpochSummary()]
