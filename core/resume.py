"""Resuming ``fit --ckpt_path`` in the run folder the checkpoint came from.

Lightning would open a new ``version_N`` folder: the metrics split in two and, because the
checkpoint folder changed, ``ModelCheckpoint`` drops the best score it had restored.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

log = logging.getLogger(__name__)

RESUMABLE_LOGGERS = ("CSVLogger", "TensorBoardLogger")
# ckpt_path values Lightning resolves itself instead of a file.
LIGHTNING_CKPT_WORDS = ("last", "best", "hpc", "registry")


def run_folder(ckpt_path: str | Path) -> Path | None:
    """``runs/NAME/version_N`` for ``runs/NAME/version_N/checkpoints/X.ckpt``, else None."""
    path = Path(ckpt_path).expanduser().resolve()
    return path.parent.parent if path.parent.name == "checkpoints" else None


def pin_logger_version(logger: Any, folder: Path) -> bool:
    """Point a CSV/TensorBoard logger config (``class_path``/``init_args``) at ``folder``.

    Only when the logger would write under ``folder``'s parent anyway (same ``save_dir`` and
    ``name``), so a checkpoint copied elsewhere never redirects the logs somewhere unexpected.
    """
    class_path = str(getattr(logger, "class_path", "") or "")
    if not class_path.endswith(RESUMABLE_LOGGERS):
        return False
    args = logger.init_args
    root = Path(args.get("save_dir") or ".").expanduser().resolve()
    name = args.get("name")
    if name is None:
        name = "lightning_logs"
    if (root / name if name else root) != folder.parent:
        return False
    args["version"] = folder.name
    return True


def logged_rows(folder: Path, before_step: int) -> list[dict[str, float]]:
    """Rows of the run's ``metrics.csv`` logged before ``before_step`` (the checkpoint's step)."""
    path = folder / "metrics.csv"
    if not path.is_file():
        return []
    rows = []
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            values = {k: float(v) for k, v in row.items() if k and v not in (None, "")}
            if values.get("step", before_step) < before_step:
                values["step"] = int(values["step"])
                if "epoch" in values:
                    values["epoch"] = int(values["epoch"])
                rows.append(values)
    return rows


class KeepLoggedMetrics(Callback):
    """Puts the resumed run's earlier rows back in front of the CSV logger's new ones.

    Lightning's CSV writer deletes an existing ``metrics.csv`` when it opens the folder.
    """

    def __init__(self, rows: list[dict[str, float]]) -> None:
        self.rows = rows

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        for logger in trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if self.rows and hasattr(experiment, "metrics") and hasattr(experiment, "metrics_keys"):
                experiment.metrics[:0] = self.rows


def plan_resume(ckpt_path: str | Path, logger: Any) -> list[Callback]:
    """Pin ``logger`` to the checkpoint's run folder; callbacks that keep its earlier metrics."""
    if str(ckpt_path) in LIGHTNING_CKPT_WORDS:
        return []
    folder = run_folder(ckpt_path)
    loggers = logger if isinstance(logger, list) else [logger]
    if folder is None or not any(pin_logger_version(lg, folder) for lg in loggers if lg):
        log.warning("resuming from %s: it is not in a run folder of this config's logger, so "
                    "this run logs into a new version folder", ckpt_path)
        return []
    step = int(torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True).get("global_step", 0))
    log.info("resuming in %s from step %d", folder, step)
    return [KeepLoggedMetrics(logged_rows(folder, step))]
