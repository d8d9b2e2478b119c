"""Export, step 3: check that ONNX Runtime gives the probabilities Lightning's ``predict`` gives.

The check runs on seeded random inputs in normalised space, at the traced batch size and at
batch 1; a difference above the tolerance fails the export before anything is published.
An INT8 model (``export --quantize int8``) is compared on the same inputs by
:func:`check_int8_parity`, whose figures are reported and gated by a looser tolerance.
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


def parity_inputs(shape: Sequence[int], samples: int, seed: int = 0) -> Tensor:
    """The seeded parity inputs ``(samples, *shape)``: standard normal, i.e. already in
    normalised space, where the data has mean 0 and std 1 per channel."""
    if samples < 1:
        raise DataError(f"parity_samples must be at least 1, got {samples}")
    return torch.randn(samples, *shape, generator=torch.Generator().manual_seed(seed))


def _both_runs(task: nn.Module, bundle: Bundle, images: Tensor,
               reference: Callable[[nn.Module, Tensor], np.ndarray],
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(Lightning's probabilities, ONNX Runtime's on the whole batch, on the first image
    alone)``, as float64."""
    expected = reference(task, images).astype(np.float64)
    got = bundle.probabilities(images.numpy()).astype(np.float64)
    if got.shape != expected.shape:
        raise DataError(f"ONNX output shape {got.shape} differs from the task's {expected.shape}")
    # One image alone too: predictors often run batch 1, and the trace was made with batch 2.
    single = bundle.probabilities(images[:1].numpy()).astype(np.float64)
    return expected, got, single


def _max_diff(expected: np.ndarray, got: np.ndarray, single: np.ndarray) -> float:
    """The largest absolute difference over the batch run and the single-image run."""
    return max(float(np.max(np.abs(got - expected))), float(np.max(np.abs(single - expected[:1]))))


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
    images = parity_inputs(shape, samples, seed)
    expected, got, single = _both_runs(task, bundle, images, reference)
    diff = _max_diff(expected, got, single)
    if not math.isfinite(diff) or diff > tolerance:
        raise DataError(
            f"export parity check failed: ONNX Runtime and PyTorch probabilities differ by up to "
            f"{diff:.3g} on {samples} seeded inputs (tolerance {tolerance:g}); no bundle was "
            "written. Raise --tolerance only if a difference this size is acceptable; otherwise "
            "report the model configuration"
        )
    return {"max_abs_diff": diff, "samples": samples, "tolerance": tolerance, "inputs": PARITY_INPUTS}


#: Default ``--int8-tolerance``: the largest probability difference of an INT8 model from
#: Lightning that export accepts. Quantising the MatMul layers of ConvNeXt moves probabilities
#: by about 0.005 to 0.01 (benchmarks/inference.py: convnext_atto 0.0049, convnext_tiny 0.0088
#: on 64 seeded images), so 0.05 leaves a five-fold margin for other models and data, while a
#: quantisation that clearly breaks the model (MatMul+Conv on convnext_tiny: 0.095, 94 % argmax
#: agreement) fails. It also bounds the harm: a decision at threshold t can change only for
#: inputs whose fp32 probability lies within 0.05 of t.
INT8_TOLERANCE = 0.05


def check_int8_parity(task: nn.Module, bundle: Bundle, shape: Sequence[int], samples: int = 4,
                      tolerance: float = INT8_TOLERANCE, seed: int = 0,
                      reference: Callable[[nn.Module, Tensor], np.ndarray] = lightning_probabilities,
                      multilabel: bool = False) -> dict[str, Any]:
    """Compare an INT8 bundle model's probabilities with Lightning's on the parity inputs.

    The inputs and runs are those of :func:`check_parity` (the whole batch, then the first
    image alone: int8 activations are scaled per run, so the two differ slightly).

    Returns:
        ``max_prob_diff``: the largest absolute probability difference over both runs;
        ``top1_agreement``: the fraction of argmax decisions (over classes, per image; per
        pixel for segmentation) that agree, over both runs (``samples + 1`` images); with
        ``multilabel`` (independent sigmoid labels, where an argmax means nothing) the
        fraction of per-label decisions at probability 0.5 that agree;
        ``samples``, ``inputs`` and ``tolerance``.

    Raises:
        DataError: the largest difference exceeds ``tolerance`` (or is not finite).
    """
    images = parity_inputs(shape, samples, seed)
    expected, got, single = _both_runs(task, bundle, images, reference)
    diff = _max_diff(expected, got, single)
    if multilabel:
        agree = np.concatenate([((got >= 0.5) == (expected >= 0.5)).ravel(),
                                ((single >= 0.5) == (expected[:1] >= 0.5)).ravel()])
    else:
        agree = np.concatenate([(got.argmax(1) == expected.argmax(1)).ravel(),
                                (single.argmax(1) == expected[:1].argmax(1)).ravel()])
    agreement = float(agree.mean())
    if not math.isfinite(diff) or diff > tolerance:
        raise DataError(
            f"INT8 parity check failed: the quantised model's probabilities differ from PyTorch's "
            f"by up to {diff:.3g} on {samples} seeded inputs (--int8-tolerance {tolerance:g}; top-1 "
            f"agreement {agreement:.3f}); no bundle was written. Export without --quantize (fp32), "
            "or raise --int8-tolerance only if a difference this size is acceptable")
    return {"samples": samples, "inputs": PARITY_INPUTS, "max_prob_diff": diff,
            "top1_agreement": agreement, "tolerance": tolerance}
