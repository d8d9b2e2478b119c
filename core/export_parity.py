"""Export, step 3: check that ONNX Runtime gives the probabilities Lightning's ``predict`` gives.

The check runs on seeded random inputs in normalised space, at the traced batch size and at
batch 1; a difference above the tolerance fails the export before anything is published.
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from core.bundle import Bundle
from core.errors import DataError

PARITY_INPUTS = "seeded standard normal in normalised space"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence Lightning's banner and the training-time warnings of a predict-only run."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
            warnings.filterwarnings("ignore", message=".*treespec, LeafSpec.*")
            yield
    finally:
        logging.disable(previous)


def lightning_predict(task: nn.Module, images: Tensor) -> list[Any]:
    """The outputs of Lightning's ``predict`` (the task's own ``predict_step``) for ``images``,
    all in one batch, without the task's prediction writers (they would write files into the
    working directory or need a scene datamodule)."""
    from lightning.pytorch import Trainer
    from torch.utils.data import DataLoader

    batch = {"image": images, "id": [f"parity-{i}" for i in range(len(images))]}
    task.configure_callbacks = lambda: []
    try:
        with _quiet():
            trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                              enable_model_summary=False, enable_checkpointing=False)
            return trainer.predict(task, DataLoader([batch], batch_size=None))
    finally:
        del task.configure_callbacks


def lightning_probabilities(task: nn.Module, images: Tensor) -> np.ndarray:
    """Probabilities from Lightning's ``predict`` (the task's own ``predict_step``) for ``images``."""
    outputs = lightning_predict(task, images)
    return torch.cat([o["probs"].float() for o in outputs]).numpy()


def check_parity(task: nn.Module, bundle: Bundle, shape: Sequence[int], samples: int = 4,
                 tolerance: float = 1e-4, seed: int = 0,
                 reference: Callable[[nn.Module, Tensor], np.ndarray] = lightning_probabilities,
                 ) -> dict[str, Any]:
    """Compare Lightning's and ONNX Runtime's probabilities on seeded random inputs.

    ``reference`` computes the expected probabilities (Lightning's ``predict`` unless a caller
    passes its own, as :func:`core.export.export_bundle` does with the one it resolves).

    Raises:
        DataError: when the largest absolute difference exceeds ``tolerance``.
    """
    if samples < 1:
        raise DataError(f"parity_samples must be at least 1, got {samples}")
    generator = torch.Generator().manual_seed(seed)
    # Inputs are already normalised, where the data has mean 0 and std 1 per channel.
    images = torch.randn(samples, *shape, generator=generator)
    expected = reference(task, images).astype(np.float64)
    got = bundle.probabilities(images.numpy())
    if got.shape != expected.shape:
        raise DataError(f"ONNX output shape {got.shape} differs from the task's {expected.shape}")
    # One image alone too: predictors often run batch 1, and the trace was made with batch 2.
    single = bundle.probabilities(images[:1].numpy())
    diff = max(float(np.max(np.abs(got.astype(np.float64) - expected))),
               float(np.max(np.abs(single.astype(np.float64) - expected[:1]))))
    if not math.isfinite(diff) or diff > tolerance:
        raise DataError(
            f"export parity check failed: ONNX Runtime and PyTorch probabilities differ by up to "
            f"{diff:.3g} on {samples} seeded inputs (tolerance {tolerance:g}); no bundle was "
            "written. Raise --tolerance only if a difference this size is acceptable; otherwise "
            "report the model configuration"
        )
    return {"max_abs_diff": diff, "samples": samples, "tolerance": tolerance, "inputs": PARITY_INPUTS}
