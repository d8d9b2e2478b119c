"""A callback for the multi-process test: each rank writes what it saw and where it ended.

Passed to the CLI as ``--trainer.callbacks+=tests.ddp_probe.RankProbe``; the folder comes from
``DDP_PROBE_DIR`` because the ranks are separate processes started by Lightning.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer


class RankProbe(Callback):
    """Records the sample ids of every training and validation batch per epoch, and saves the
    final weights, as ``rank<N>.json`` / ``rank<N>.pt`` in ``$DDP_PROBE_DIR``."""

    def __init__(self) -> None:
        self.seen: dict[str, list[str]] = defaultdict(list)

    def _record(self, stage: str, trainer: Trainer, batch: dict[str, Any]) -> None:
        self.seen[f"{stage}{trainer.current_epoch}"] += [str(i) for i in batch["id"]]

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._record("train", trainer, batch)

    def on_validation_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any,
                                  batch_idx: int, dataloader_idx: int = 0) -> None:
        if not trainer.sanity_checking:
            self._record("val", trainer, batch)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        out = Path(os.environ["DDP_PROBE_DIR"])
        out.mkdir(parents=True, exist_ok=True)
        rank = trainer.global_rank
        (out / f"rank{rank}.json").write_text(json.dumps({"world": trainer.world_size, **self.seen}))
        torch.save({k: v.detach().cpu() for k, v in pl_module.state_dict().items()}, out / f"rank{rank}.pt")
