"""Shared fixtures: tiny architectures and tiny synthetic image data sets (no downloads)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from PIL import Image
from torch.utils.data import DataLoader

# A ConvNeXt with one block per stage and few channels: fast enough for CPU unit tests.
TINY = {"backbone": "convnext_atto", "depths": [1, 1, 1, 1], "dims": [8, 16, 32, 64]}
# The same architecture as CLI overrides.
TINY_ARGS = [f"--model.init_args.depths={TINY['depths']}", f"--model.init_args.dims={TINY['dims']}"]
REALDATA = Path(__file__).resolve().parents[1].parent / "shared" / "realdata"


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)


def cpu_trainer(tmp_path: Path, **kwargs) -> Trainer:
    """A quiet CPU trainer for unit tests; keyword arguments override the defaults."""
    defaults = dict(accelerator="cpu", logger=False, enable_progress_bar=False,
                    enable_model_summary=False, enable_checkpointing=False,
                    default_root_dir=tmp_path)
    return Trainer(**{**defaults, **kwargs})


def mean_loss(task, data) -> float:
    """The task's loss over the whole of a small dataset, in eval mode."""
    task.eval()
    with torch.no_grad():
        batch = next(iter(DataLoader(data, batch_size=len(data))))
        loss = float(task.compute_loss(task(batch["image"]), batch[task.target_key]))
    task.train()
    return loss


def write_defect_image(path: Path, defect: bool, rng: np.random.Generator, size: int = 48,
                       mode: str = "L") -> None:
    """A noisy gray tile; defective tiles carry a bright scratch, so classes are learnable."""
    img = rng.normal(100, 10, (size, size)).clip(0, 255)
    if defect:
        r = rng.integers(4, size - 12)
        img[r : r + 3, 4:-4] = 240
    arr = img.astype(np.uint8)
    if mode == "RGB":
        arr = np.stack([arr] * 3, axis=-1)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode=mode).save(path)


def make_defect_folders(root: Path, per_class: int = 12, classes=("good", "scratch"),
                        mode: str = "L", seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for name in classes:
        for i in range(per_class):
            write_defect_image(root / name / f"{name}_{i:03d}.png", name != "good", rng, mode=mode)
    return root


@pytest.fixture
def defect_folder(tmp_path: Path) -> Path:
    return make_defect_folders(tmp_path / "defects")
