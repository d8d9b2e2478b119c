"""Export a trained checkpoint to a torch-free bundle: ONNX network, metadata and model card.

``convnext-domains export --ckpt RUN.ckpt --out DIR`` rebuilds the task from the checkpoint
(no pretrained weights file or hub access needed: the state dict holds every weight), writes
``model.onnx`` (the network only: ``NCHW float32`` in, logits out), checks on seeded inputs
that ONNX Runtime gives the same probabilities as Lightning's ``predict``, and writes
``README.md`` (model card) and ``metadata.json`` (schema of :mod:`core.bundle`, sealed with
the sha256 of every file). The bundle also carries its own torch-free predictor
(``predict.py``, ``requirements.txt`` and ``predictor/``, copies of the project modules that
:data:`core.predict_bundle.READERS` names for its reader), so it can be handed over alone.

Everything is written into a temporary folder next to ``DIR`` and renamed into place only when
all of it succeeded, so ``DIR`` is either a complete, verified bundle or absent. SIGTERM removes
the temporary folder; one left by a killed export (SIGKILL, power loss) is removed by the next
export into the same folder once it is provably abandoned (:func:`clean_stale_partials`).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import importlib.metadata
import importlib.util
import json
import logging
import math
import os
import platform
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from core.bundle import (
    LAUNCHER,
    METADATA,
    MODEL,
    PREDICTOR,
    REQUIREMENTS,
    SCHEMA_VERSION,
    Bundle,
    load_bundle,
    seal,
)
from core.errors import DataError
from core.predict_bundle import BASE_PACKAGES, PREDICTOR_MODULES, reader_support
from core.weights import parse_pretrained

log = logging.getLogger(__name__)

CHECKPOINT_COPY = "model.ckpt"
CARD = "README.md"
PARITY_INPUTS = "seeded standard normal in normalised space"
VERSIONED = ("convnext-domains", "torch", "lightning", "timm", "onnx", "onnxruntime", "numpy")
# Top-level packages of this project: the predictor copies their modules, nothing else.
PROJECT_PACKAGES = ("core", "domains")
DISTRIBUTION = "convnext-domains"
# Marks a temporary export folder as ours while it is being written (removed before sealing).
OWNER = ".export-owner.json"
OWNER_TOOL = "convnext-domains export"
# A temporary folder nobody touched for this long is abandoned even if its owner is unknown;
# an export takes minutes, so a live one is never this old.
STALE_AFTER_S = 24 * 3600
_PARTIAL_NAME = re.compile(r"^\..+\.partial-[A-Za-z0-9_]+$")


# ---- the checkpoint -----------------------------------------------------------------------
def load_checkpoint(ckpt: str | Path) -> dict[str, Any]:
    """The checkpoint dict, after checking it was written by a convnext-domains task run."""
    path = Path(ckpt).expanduser()
    if not path.is_file():
        raise DataError(f"checkpoint '{path}' does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors come in many types
        raise DataError(f"cannot read checkpoint '{path}': {err}") from err
    missing = [k for k in ("task_class", "preprocessing", "state_dict", "hyper_parameters")
               if not isinstance(checkpoint, dict) or k not in checkpoint]
    if missing:
        raise DataError(
            f"checkpoint '{path}' was not written by a convnext-domains task run (it has no "
            f"{', '.join(missing)}): export the checkpoint of a `convnext-domains fit` run with "
            "this version, e.g. runs/<name>/version_N/checkpoints/best-*.ckpt"
        )
    return checkpoint


def rebuild_task(checkpoint: dict[str, Any], source: str | Path = "checkpoint") -> nn.Module:
    """The task of ``checkpoint`` with its trained weights, in eval mode.

    ``pretrained`` is forced to ``False``: the state dict already holds every weight, and the
    original weights file or the hub may not be reachable where the export runs.
    """
    module_name, _, class_name = str(checkpoint["task_class"]).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except ModuleNotFoundError as err:
        raise DataError(f"checkpoint '{source}' needs {checkpoint['task_class']}, which cannot be "
                        f"imported ({err}); install the domain's extra, e.g. "
                        "pip install 'convnext-domains[medical]' or '[agriculture]'") from err
    except AttributeError as err:
        raise DataError(f"checkpoint '{source}' names task class {checkpoint['task_class']}, "
                        "which this convnext-domains does not have") from err
    # LightningCLI adds bookkeeping entries (_class_path, _instantiator) that are no arguments.
    hparams = {k: v for k, v in checkpoint["hyper_parameters"].items() if not k.startswith("_")}
    hparams["pretrained"] = False
    try:
        task = cls(**hparams)
        task.load_state_dict(checkpoint["state_dict"], strict=True)
    except (TypeError, RuntimeError, ValueError) as err:
        raise DataError(f"cannot rebuild {checkpoint['task_class']} from '{source}' ({err}); was "
                        "it written by another convnext-domains version?") from err
    return task.eval()


def input_shape(preprocessing: dict[str, Any], in_chans: int) -> tuple[int, int, int]:
    """``(C, H, W)`` of one network input, from the checkpoint's preprocessing contract."""
    channels = int(preprocessing.get("in_chans") or in_chans)
    if channels != int(in_chans):
        raise DataError(f"the checkpoint's preprocessing gives {channels} input channels but the "
                        f"model was built for {in_chans}")
    key = "tile_size" if preprocessing.get("reader") == "geotiff_scene" else "image_size"
    size = preprocessing.get(key)
    if size is None:
        raise DataError(f"the checkpoint's preprocessing has no {key}: the input size is unknown")
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    return channels, int(height), int(width)


def task_kind(task: nn.Module) -> str:
    """``segmentation``, ``multilabel`` or ``classification``."""
    from core.segmentation import SegmentationTask

    if isinstance(task, SegmentationTask):
        return "segmentation"
    return "multilabel" if getattr(task, "multilabel", False) else "classification"


# ---- ONNX ---------------------------------------------------------------------------------
def _pool_matrix(size_in: int, size_out: int) -> Tensor:
    """``(size_out, size_in)`` averaging weights of adaptive pooling along one axis."""
    matrix = torch.zeros(size_out, size_in)
    for i in range(size_out):
        # The same bins as PyTorch: [floor(i * in / out), ceil((i + 1) * in / out)).
        start, end = (i * size_in) // size_out, -((-(i + 1) * size_in) // size_out)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


class FixedAdaptiveAvgPool2d(nn.Module):
    """Adaptive average pooling for one known input size, as two matrix products.

    The legacy ONNX exporter only handles adaptive pooling whose output size divides the input
    size; UPerNet's pyramid pooling (grids 1, 2, 3, 6 on e.g. a 2x2 map) does not. With the
    spatial size fixed at export, the pooling is a linear map that ONNX expresses as MatMul.
    """

    def __init__(self, size_in: Sequence[int], size_out: Sequence[int]) -> None:
        super().__init__()
        self.register_buffer("rows", _pool_matrix(size_in[0], size_out[0]))
        self.register_buffer("cols_t", _pool_matrix(size_in[1], size_out[1]).t().contiguous())

    def forward(self, x: Tensor) -> Tensor:
        return torch.matmul(torch.matmul(self.rows, x), self.cols_t)


@contextlib.contextmanager
def exportable_pools(model: nn.Module, example: Tensor) -> Iterator[int]:
    """Temporarily replace non-global ``nn.AdaptiveAvgPool2d`` by :class:`FixedAdaptiveAvgPool2d`.

    Sizes are recorded on ``example``; the original modules come back on exit (the parity
    check then compares the exported replacement against the untouched network). Yields the
    number of replaced modules.
    """
    sizes: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, nn.AdaptiveAvgPool2d):
            def record(mod, args, output, name=name):
                sizes[name] = (tuple(args[0].shape[-2:]), tuple(output.shape[-2:]))
            hooks.append(module.register_forward_hook(record))
    if hooks:
        try:
            with torch.no_grad():
                model(example)
        finally:
            for hook in hooks:
                hook.remove()
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    try:
        for name, (size_in, size_out) in sizes.items():
            if size_out == (1, 1):
                continue  # global pooling exports as GlobalAveragePool
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            original = getattr(parent, child)
            setattr(parent, child, FixedAdaptiveAvgPool2d(size_in, size_out))
            swapped.append((parent, child, original))
        yield len(swapped)
    finally:
        for parent, child, original in reversed(swapped):
            setattr(parent, child, original)


def write_onnx(model: nn.Module, path: Path, shape: Sequence[int], opset: int = 17) -> None:
    """Export ``model`` (eval mode) to ``path``: input ``input`` ``(batch, *shape)``, output ``logits``."""
    # Batch 2, not 1: the tracer may freeze size-1 dimensions; parity then runs another batch size.
    example = torch.zeros(2, *shape)
    with exportable_pools(model, example), warnings.catch_warnings():
        # The TorchScript exporter is deliberate (the dynamo one needs onnxscript); its
        # deprecation notice is no news to the user.
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=".*The feature will be removed.*")
        # Spatial sizes are fixed by design (only the batch axis is dynamic); a batch-dependent
        # trace would be caught by the parity check, which runs another batch size.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            model, (example,), str(path), dynamo=False, opset_version=opset,
            input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )


# ---- parity -------------------------------------------------------------------------------
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


def lightning_probabilities(task: nn.Module, images: Tensor) -> np.ndarray:
    """Probabilities from Lightning's ``predict`` (the task's own ``predict_step``) for ``images``."""
    from lightning.pytorch import Trainer
    from torch.utils.data import DataLoader

    batch = {"image": images, "id": [f"parity-{i}" for i in range(len(images))]}
    # The tasks' prediction writers would write predictions.csv into the working directory or
    # need a scene datamodule; only the returned probabilities are wanted here.
    task.configure_callbacks = lambda: []
    try:
        with _quiet():
            trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                              enable_model_summary=False, enable_checkpointing=False)
            outputs = trainer.predict(task, DataLoader([batch], batch_size=None))
    finally:
        del task.configure_callbacks
    return torch.cat([o["probs"].float() for o in outputs]).numpy()


def check_parity(task: nn.Module, bundle: Bundle, shape: Sequence[int], samples: int = 4,
                 tolerance: float = 1e-4, seed: int = 0) -> dict[str, Any]:
    """Compare Lightning's and ONNX Runtime's probabilities on seeded random inputs.

    Raises:
        DataError: when the largest absolute difference exceeds ``tolerance``.
    """
    if samples < 1:
        raise DataError(f"parity_samples must be at least 1, got {samples}")
    generator = torch.Generator().manual_seed(seed)
    # Inputs are already normalised, where the data has mean 0 and std 1 per channel.
    images = torch.randn(samples, *shape, generator=generator)
    expected = lightning_probabilities(task, images).astype(np.float64)
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


# ---- metadata -----------------------------------------------------------------------------
def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _jsonable(value: Any) -> Any:
    """Plain JSON: tuples to lists, paths to strings, NaN/inf to null (strict JSON readers)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, np.integer):
        return int(value)
    return str(value)


def backbone_info(task: nn.Module, pretrained: bool | str | None) -> dict[str, Any]:
    """Architecture and the origin of the pretrained weights (a file name only, never a path).

    ``pretrained`` is the training run's setting; the rebuilt task always has ``False``.
    """
    h = task.hparams
    timm_model = task.backbone.model
    source = parse_pretrained(pretrained).source
    if source == "none":
        origin, licence = "none", "no pretrained weights (trained from scratch)"
    elif source == "hub":
        origin = "timm hub"
        try:
            import timm.models

            licence = getattr(timm.models.get_pretrained_cfg(h.backbone), "license", None)
        except Exception:  # timm's registry API differs across versions
            licence = None
        licence = licence or "see the timm model card"
    else:
        # A full path may contain a user name: keep the file name only.
        origin = Path(str(pretrained)).name
        licence = "unknown: weights from a local file, check their source's licence"
    return {
        "name": h.backbone,
        "depths": [len(stage.blocks) for stage in timm_model.stages],
        "dims": list(task.backbone.channels),
        "in_chans": int(h.in_chans),
        "pretrained": origin,
        "weight_licence": licence,
    }


def decision_info(task: nn.Module) -> dict[str, Any] | None:
    """The operating point of a classifier, or None."""
    if not getattr(task, "has_operating_point", False):
        return None
    threshold = float(task.threshold)
    return {
        "positive_classes": [task.class_names[i] for i in task.positive_index],
        "positive_index": [int(i) for i in task.positive_index],
        "threshold": threshold if math.isfinite(threshold) else None,
        "target_recall": task.hparams.target_recall,
        "rule": "positive if sum of P(positive classes) >= threshold",
        "metric_names": dict(task.operating_point_names),
    }


def run_metrics(ckpt: Path) -> dict[str, Any] | None:
    """The run's ``metrics.json`` (``<run>/checkpoints/x.ckpt`` -> ``<run>``), or None."""
    for folder in (ckpt.parent.parent, ckpt.parent):
        path = folder / "metrics.json"
        if path.is_file():
            try:
                return json.loads(path.read_text())
            except json.JSONDecodeError as err:
                log.warning("ignoring unreadable %s: %s", path, err)
                return None
    return None


def build_metadata(task: nn.Module, checkpoint: dict[str, Any], ckpt: Path,
                   shape: Sequence[int]) -> dict[str, Any]:
    """metadata.json without ``parity``, ``files`` and ``metadata_sha256``."""
    kind = task_kind(task)
    parts = str(checkpoint["task_class"]).split(".")
    return {
        "schema_version": SCHEMA_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "domain": parts[1] if parts[0] == "domains" and len(parts) > 2 else "core",
        "task": kind,
        "task_class": checkpoint["task_class"],
        "class_names": list(task.class_names),
        "input": {**checkpoint["preprocessing"], "dtype": "float32", "layout": "NCHW",
                  "shape": [None, *shape]},
        "output": {"name": "logits", "activation": "sigmoid" if kind == "multilabel" else "softmax",
                   "shape": "N,K,H,W" if kind == "segmentation" else "N,K"},
        "decision": decision_info(task),
        "metrics": run_metrics(ckpt),
        "training_data": checkpoint.get("data_fingerprint"),
        "versions": {**{p: _version(p) for p in VERSIONED}, "python": platform.python_version()},
        "backbone": backbone_info(task, checkpoint["hyper_parameters"].get("pretrained", False)),
    }


# ---- model card ---------------------------------------------------------------------------
def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ", ".join(_fmt(v) for v in value)
    return "—" if value is None else str(value)


def model_card(meta: dict[str, Any]) -> str:
    """README.md of the bundle: what the model is for, what it expects and how far to trust it."""
    inp, out, data = meta["input"], meta["output"], meta.get("training_data") or {}
    reader, shape = inp.get("reader"), meta["input"]["shape"]
    decision, metrics, parity = meta.get("decision"), meta.get("metrics"), meta["parity"]
    title = meta["task_class"].rsplit(".", 1)[-1]
    lines = [
        f"# {title}: {meta['domain']} {meta['task']} model",
        "",
        "Exported by convnext-domains (bundle schema "
        f"{meta['schema_version']}, {meta['created']}). `metadata.json` holds the full input "
        "contract and the sha256 of every file; the predictor refuses a modified bundle.",
        "",
        "## Intended use",
        "",
        f"- **Domain / task**: {meta['domain']}, {meta['task']} into {len(meta['class_names'])} classes"
        + (" (per pixel)" if meta["task"] == "segmentation" else "")
        + (" (independent labels, sigmoid)" if meta["task"] == "multilabel" else "") + ".",
        f"- **Reader**: `{reader}`.",
    ]
    channel_names = inp.get("channel_names") or inp.get("bands")
    if channel_names:
        lines.append(f"- **Channels / bands** ({shape[1]}): {_fmt(channel_names)}"
                     + (f"; spectral indices {_fmt(inp['indices'])}" if inp.get("indices") else "") + ".")
    else:
        lines.append(f"- **Channels**: {shape[1]}" + (f" ({inp['channels']})" if inp.get("channels") else "") + ".")
    if reader == "dicom":
        lines.append(f"- **DICOM**: modality LUT {'on' if inp.get('modality_lut') else 'off'}, "
                     f"window(s) {_fmt(inp.get('window'))}, frames {_fmt(inp.get('frames'))}, "
                     f"target spacing {_fmt(inp.get('target_spacing'))}.")
    size = f"{shape[2]}x{shape[3]}"
    if reader == "geotiff_scene":
        lines.append(f"- **Size**: tiles of {size} pixels; whole scenes are cut into overlapping "
                     f"tiles (overlap {_fmt(inp.get('predict_overlap'))}) and blended.")
    else:
        lines.append(f"- **Size**: resized to {size} (height x width).")
    lines += [
        f"- **Normalisation**: (x - mean) / std per channel, mean {_fmt(inp.get('mean'))}, "
        f"std {_fmt(inp.get('std'))}"
        # The base contract's integer scaling applies to the PIL image reader only; DICOM and
        # GeoTIFF readers have their own value ranges (modality LUT + window, raw band values).
        + (f"; {inp['input_scaling']}" if reader == "image" and inp.get("input_scaling") else "")
        + ".",
        f"- **Network**: `model.onnx`, input `input` float32 NCHW (N, {shape[1]}, {shape[2]}, "
        f"{shape[3]}), output `logits` "
        f"({out['shape']}), probabilities by {out['activation']}.",
        "",
        "## Classes",
        "",
        "| index | class |",
        "|---|---|",
        *[f"| {i} | {name} |" for i, name in enumerate(meta["class_names"])],
        "",
        "## Training data",
        "",
    ]
    if data:
        lines += [
            f"- samples: {_fmt(data.get('num_samples'))}; split sizes: "
            + ", ".join(f"{k} {v}" for k, v in (data.get("split_sizes") or {}).items()),
            f"- training class counts: {_fmt(data.get('train_class_counts'))}",
            f"- sample list sha256: `{data.get('sample_list_sha256')}` (split seed {_fmt(data.get('split_seed'))})",
            "",
            "The fingerprint identifies the training data without containing it.",
        ]
    else:
        lines.append("Not recorded in the checkpoint.")
    lines += ["", "## Test metrics", ""]
    values = (metrics or {}).get("metrics") if isinstance(metrics, dict) else None
    if values:
        count = (f"{metrics['num_labelled_pixels']} labelled test pixels"
                 if "num_labelled_pixels" in metrics else f"{_fmt(metrics.get('num_samples'))} test samples")
        lines += [f"From the run's `metrics.json` ({count}; they describe the checkpoint tested "
                  "in that run).", "",
                  "| metric | value |", "|---|---|",
                  *[f"| {k} | {_fmt(v)} |" for k, v in values.items()]]
    else:
        lines.append("Not known: no `metrics.json` was found in the checkpoint's run directory "
                     "(run `convnext-domains test` on it before exporting).")
    lines += ["", "## Operating point", ""]
    if decision:
        threshold = decision["threshold"]
        lines += [
            f"Positive classes: {_fmt(decision['positive_classes'])}. Rule: "
            f"{decision['rule']}, threshold **{_fmt(threshold)}**"
            + (" (none chosen on validation; the training code falls back to 0.5)" if threshold is None else "")
            + f", chosen on validation for target recall {_fmt(decision['target_recall'])}.",
            "",
            "Override it at prediction time, never by editing `metadata.json` (that breaks its digest):",
            "",
            "```bash",
            "convnext-domains predict --bundle DIR INPUT... --out OUT --threshold T",
            "```",
        ]
    else:
        lines.append("None: the predicted class is the most probable one"
                     + (" per pixel." if meta["task"] == "segmentation" else
                        "; multilabel outputs use 0.5 per label." if meta["task"] == "multilabel" else "."))
    lines += [
        "",
        "## Export parity",
        "",
        f"On {parity['samples']} inputs ({parity['inputs']}), ONNX Runtime's probabilities "
        f"differ from PyTorch Lightning's by at most {parity['max_abs_diff']:.3g} "
        f"(tolerance {parity['tolerance']:g}).",
        "",
        "## Limitations",
        "",
    ]
    backbone = meta["backbone"]
    if backbone["pretrained"] == "none":
        lines.append("- Trained from scratch (no pretrained weights): expect less robustness than "
                     "a fine-tuned pretrained model.")
    else:
        lines.append(f"- Pretrained weights: {backbone['pretrained']}; licence: {backbone['weight_licence']}.")
    test_size = (data.get("split_sizes") or {}).get("test")
    unit = "spatial blocks of the training scene" if reader == "geotiff_scene" else "samples of the training source"
    lines.append(f"- Metrics come from a held-out split of {_fmt(test_size) if test_size else 'an unknown number of'} "
                 f"{unit}; they do not show performance on other sites, "
                 "devices, sensors or periods.")
    lines.append("- Inputs must follow the contract above (reader, channels, window, size, "
                 "normalisation); other inputs give meaningless outputs.")
    if meta["domain"] == "medical" or reader == "dicom":
        lines.append("- **Not a medical device.** For research only; not validated for clinical "
                     "use or diagnosis.")
    if meta["task"] == "segmentation":
        lines.append(f"- The network takes {size} tiles; larger images are predicted tile by tile.")
    predictor = meta.get("predictor") or {}
    lines += [
        "",
        "## How to run",
        "",
        "This folder runs on its own, without torch or a convnext-domains checkout (Python "
        f"{predictor.get('python', '>=3.10')}; `{REQUIREMENTS}`: "
        f"{', '.join(predictor.get('requirements') or [])}):",
        "",
        "```bash",
        f"pip install -r DIR/{REQUIREMENTS}",
        f"python DIR/{LAUNCHER} INPUT... --out OUT",
        "```",
        "",
        f"`{PREDICTOR}/` holds the predictor's code, copied from convnext-domains at export and "
        "sealed with the model. Where convnext-domains is installed, this is the same as:",
        "",
        "```bash",
        "convnext-domains predict --bundle DIR INPUT... --out OUT",
        "```",
        "",
        f"Backbone: {backbone['name']}, depths {_fmt(backbone['depths'])}, dims {_fmt(backbone['dims'])}, "
        f"{backbone['in_chans']} input channels.",
        "",
    ]
    return "\n".join(lines)


# ---- the self-contained predictor ---------------------------------------------------------
LAUNCHER_SOURCE = '''"""Predict with this bundle; needs neither torch nor a convnext-domains checkout.

    pip install -r requirements.txt
    python predict.py INPUT... --out OUT [--threshold T]

predictor/ is a copy of convnext-domains' torch-free prediction code, made at export and sealed
with the model in metadata.json: a modified file is refused before it runs.
"""
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if sys.version_info < (3, 10):
    sys.exit("error: this predictor needs Python 3.10 or newer")
sys.dont_write_bytecode = True  # leave the handed-over folder exactly as it was sealed
sys.path.insert(0, str(HERE / "predictor"))


def _missing(err: ImportError) -> None:
    print(f"error: {err}; install this bundle's requirements: pip install -r "
          f"{HERE / 'requirements.txt'}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    try:
        from core.bundle import BundleError, load_bundle
    except ImportError as err:
        _missing(err)
    try:
        load_bundle(HERE)  # every sha256, the predictor's included, before it is imported
    except BundleError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    try:
        from core.predict_bundle import main
        main(sys.argv[1:], bundle=HERE)
    except ModuleNotFoundError as err:  # a reader's package (pydicom, rasterio) is missing
        _missing(err)
'''


def _module_source(name: str) -> Path | None:
    """The source file of a project module (``__init__.py`` for a package), or None."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    return Path(spec.origin)


def _is_type_checking(node: ast.stmt) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _top_level(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Statements run at import: module level, inside if/try/with blocks, not in defs."""
    for node in body:
        if _is_type_checking(node):
            continue
        yield node
        if isinstance(node, ast.If | ast.Try | ast.With):
            for block in ("body", "orelse", "finalbody"):
                yield from _top_level(getattr(node, block, []))
            for handler in getattr(node, "handlers", []):
                yield from _top_level(handler.body)


def _imports(name: str, tree: ast.Module, module_level: bool) -> set[str]:
    """Project modules imported by module ``name``: at import time, or lazily inside functions.

    ``from pkg import x`` counts ``pkg.x`` when that is a module; relative imports are resolved.
    """
    source = _module_source(name)
    package = name if source is not None and source.name == "__init__.py" else name.rpartition(".")[0]
    top = list(_top_level(tree.body))
    if module_level:
        nodes = top
    else:
        skip = {id(n) for n in top}
        skip |= {id(n) for node in ast.walk(tree) if _is_type_checking(node) for n in ast.walk(node)}
        nodes = [n for n in ast.walk(tree) if id(n) not in skip]
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parent = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{parent}.{base}" if base else parent
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names
                         if base.split(".")[0] in PROJECT_PACKAGES
                         and _module_source(f"{base}.{alias.name}") is not None)
    return {m for m in found if m.split(".")[0] in PROJECT_PACKAGES and _module_source(m) is not None}


def reader_packages(reader: str) -> tuple[str, ...]:
    """The domain packages a reader kind's declared modules live in (none for plain images)."""
    return tuple(sorted({m.rpartition(".")[0] for m in reader_support(reader).modules}))


def _carried(module: str, packages: tuple[str, ...]) -> bool:
    """Whether a lazily imported ``module`` belongs in the bundle: core, or the reader's domain."""
    return any(module == p or module.startswith(f"{p}.") for p in ("core", *packages))


def predictor_modules(reader: str) -> list[str]:
    """Every project module the torch-free predictor of a ``reader`` bundle can import.

    Starts from :data:`core.predict_bundle.PREDICTOR_MODULES` and the reader's declared
    modules, adds the packages (``__init__``) above each and follows their imports of project
    modules: all module-level ones, and those inside functions when they stay in core or in the
    reader's own domain package (so a DICOM bundle carries no agriculture code). The list
    follows the code instead of being kept by hand.
    """
    packages = reader_packages(reader)
    todo = [*PREDICTOR_MODULES, *reader_support(reader).modules]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        source = _module_source(name)
        if source is None:
            raise DataError(f"the predictor of '{reader}' bundles needs module {name}, which cannot "
                            "be found; reinstall convnext-domains with that domain's files")
        seen.add(name)
        parts = name.split(".")
        tree = ast.parse(source.read_text(), str(source))
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        todo += sorted(_imports(name, tree, module_level=True))
        todo += sorted(m for m in _imports(name, tree, module_level=False) if _carried(m, packages))
    return sorted(seen)


def _canonical(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


# name, optional [extras], version specifier, optional "; marker" of a PEP 508 requirement
_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*([^;]*)")


def _declared_requirements() -> dict[str, str]:
    """``{canonical name: requirement}`` from the installed convnext-domains' metadata.

    That metadata is pyproject.toml's dependencies and extras, so the floors are declared once.
    """
    try:
        declared = importlib.metadata.requires(DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError as err:
        raise DataError(f"{DISTRIBUTION} is not installed, so its declared requirements are "
                        "unknown; install it (pip install -e '.[export]') and export again") from err
    found: dict[str, str] = {}
    for text in declared:
        match = _REQUIREMENT.match(text)
        if match:
            name, specifier = match.group(1), match.group(2).replace(" ", "")
            found.setdefault(_canonical(name), f"{name}{specifier}")
    return found


def predictor_requirements(reader: str) -> list[str]:
    """requirements.txt lines of a ``reader`` bundle, with the project's version floors."""
    declared = _declared_requirements()
    lines = []
    for package in (*BASE_PACKAGES, *reader_support(reader).packages):
        if _canonical(package) not in declared:
            raise DataError(f"{DISTRIBUTION} declares no requirement for {package}, which the "
                            f"'{reader}' predictor needs; add it to pyproject.toml")
        lines.append(declared[_canonical(package)])
    return lines


def write_predictor(folder: Path, reader: str) -> dict[str, Any]:
    """Write ``predict.py``, ``requirements.txt`` and ``predictor/`` into ``folder``.

    Returns the ``predictor`` entry of metadata.json.
    """
    modules = predictor_modules(reader)
    for name in modules:
        source = _module_source(name)
        relative = Path(*name.split("."))
        relative = relative / "__init__.py" if source.name == "__init__.py" else relative.with_suffix(".py")
        target = folder / PREDICTOR / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    requirements = predictor_requirements(reader)
    (folder / REQUIREMENTS).write_text(
        f"# Packages of this bundle's predictor ({LAUNCHER}); no torch needed.\n"
        f"# pip install -r {REQUIREMENTS}\n" + "".join(f"{line}\n" for line in requirements))
    (folder / LAUNCHER).write_text(LAUNCHER_SOURCE)
    return {"command": f"python {LAUNCHER} INPUT... --out OUT", "requirements": requirements,
            "modules": modules, "python": ">=3.10"}


# ---- interrupted exports ------------------------------------------------------------------
class ExportInterrupted(BaseException):
    """SIGTERM arrived during an export (a BaseException, like KeyboardInterrupt for SIGINT)."""

    def __init__(self, published: Path | None = None) -> None:
        super().__init__("export interrupted by SIGTERM")
        self.published = published


class _SigtermGuard:
    """While active, SIGTERM raises :class:`ExportInterrupted` so the temporary folder is removed.

    Inside :meth:`deferred` (the final renames) the signal waits until the block is done: a
    rename pair cut in the middle would lose the previous bundle.
    """

    def __init__(self) -> None:
        self.previous: Any = None
        self.installed = False
        self.deferring = False
        self.pending = False
        self.fired = False

    def _handle(self, signum: int, frame: Any) -> None:
        # Once raised, a repeated SIGTERM must not cut short the removal it started.
        if self.deferring or self.fired:
            self.pending = True
            return
        self.fired = True
        raise ExportInterrupted()

    def __enter__(self) -> _SigtermGuard:
        # Handlers can only be set from the main thread; elsewhere SIGTERM keeps its meaning.
        if hasattr(signal, "SIGTERM") and threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, self._handle)
            self.installed = True
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.installed:
            signal.signal(signal.SIGTERM, self.previous if self.previous is not None else signal.SIG_DFL)

    @contextlib.contextmanager
    def deferred(self, published: Path) -> Iterator[None]:
        self.deferring = True
        try:
            yield
        finally:
            self.deferring = False
        if self.pending:
            raise ExportInterrupted(published)


def _pid_running(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (True when that cannot be told)."""
    if os.name != "posix" or pid <= 0:
        return True  # os.kill(pid, 0) is no probe on Windows: it would end the process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # exists but belongs to another user, or not a pid at all
    return True


def _newest_mtime(folder: Path) -> float:
    times = [folder.stat().st_mtime]
    times += [p.lstat().st_mtime for p in folder.rglob("*")]
    return max(times)


def _stale_reason(folder: Path, now: float) -> str | None:
    """Why ``folder`` (named like our temporary export folders) is an abandoned export of ours,
    or None when that is not certain (then it is kept)."""
    try:
        owner = json.loads((folder / OWNER).read_text())
    except FileNotFoundError:
        owner = None
    except (OSError, ValueError):
        return None
    if owner is not None:
        if not isinstance(owner, dict) or owner.get("tool") != OWNER_TOOL:
            return None
        pid = owner.get("pid")
        if owner.get("host") == socket.gethostname() and isinstance(pid, int) and not _pid_running(pid):
            return f"its process {pid} is no longer running"
    else:
        # Left by an export from before owner files: ours only if it holds bundle files alone.
        known = {MODEL, METADATA, CARD, CHECKPOINT_COPY, LAUNCHER, REQUIREMENTS, PREDICTOR}
        if any(p.name not in known for p in folder.iterdir()):
            return None
    age = now - _newest_mtime(folder)
    return f"untouched for {age / 3600:.0f} hours" if age > STALE_AFTER_S else None


def clean_stale_partials(parent: Path) -> list[Path]:
    """Remove abandoned temporary export folders (``.NAME.partial-*``) in ``parent``.

    A folder is removed only when it is provably ours and abandoned: its owner file names a
    process of this machine that no longer runs, or nothing in it changed for
    :data:`STALE_AFTER_S`. A concurrent export's folder is kept. Returns the removed folders.
    """
    removed = []
    if not parent.is_dir():
        return removed
    now = time.time()
    for folder in sorted(parent.iterdir()):
        if not _PARTIAL_NAME.match(folder.name) or folder.is_symlink() or not folder.is_dir():
            continue
        try:
            reason = _stale_reason(folder, now)
            if reason is None:
                continue
            size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
            shutil.rmtree(folder)
        except OSError as err:  # vanished meanwhile, or not ours to delete: leave it
            log.debug("kept %s: %s", folder, err)
            continue
        log.warning("removed '%s', left by an interrupted export: %s (%.1f MB)", folder, reason,
                    size / 1e6)
        removed.append(folder)
    return removed


# ---- the export ---------------------------------------------------------------------------
def _check_target(out: Path, overwrite: bool) -> None:
    if not (out.exists() or out.is_symlink()):
        return
    if not overwrite:
        raise DataError(f"'{out}' already exists; choose another --out or pass --overwrite")
    # Never delete a folder that is not a bundle: --out ~ --overwrite must not wipe a home.
    if not out.is_dir() or not ((out / METADATA).is_file() or not any(out.iterdir())):
        raise DataError(f"refusing to overwrite '{out}': it is not an export bundle "
                        f"(no {METADATA}); choose another --out")


def _publish(tmp: Path, out: Path, overwrite: bool) -> None:
    """Rename the finished ``tmp`` to ``out``; an old bundle is swapped out, then deleted."""
    _check_target(out, overwrite)
    if not (out.exists() or out.is_symlink()):
        os.replace(tmp, out)
        return
    old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old, out)  # put the previous bundle back
        raise
    shutil.rmtree(old, ignore_errors=True)


def export_bundle(
    ckpt: str | Path,
    out: str | Path,
    include_checkpoint: bool = False,
    overwrite: bool = False,
    parity_samples: int = 4,
    tolerance: float = 1e-4,
    opset: int = 17,
    seed: int = 0,
) -> Path:
    """Export a checkpoint to a verified bundle folder.

    Args:
        ckpt: checkpoint of a convnext-domains run (it carries ``task_class`` and ``preprocessing``).
        out: bundle folder to create.
        include_checkpoint: also copy the checkpoint as ``model.ckpt`` (for further training).
        overwrite: replace an existing bundle at ``out``.
        parity_samples: seeded random inputs on which ONNX Runtime must match Lightning.
        tolerance: largest allowed absolute difference of probabilities.
        opset: ONNX opset.
        seed: seed of the parity inputs.

    Returns:
        The bundle folder.

    Raises:
        DataError: not a convnext-domains checkpoint, ``out`` exists, or the parity check failed.
            Nothing is left at ``out`` (nor any temporary folder) on failure.
        ExportInterrupted: SIGTERM arrived (the temporary folder is removed first; if it came
            during the final rename, the finished bundle is at ``out`` and ``published`` says so).
    """
    ckpt, out = Path(ckpt).expanduser(), Path(out).expanduser().absolute()
    _check_target(out, overwrite)  # fail before minutes of work, checked again at the rename
    try:
        import onnxruntime  # noqa: F401
    except ImportError as err:
        raise DataError("export needs onnxruntime: pip install 'convnext-domains[export]'") from err
    checkpoint = load_checkpoint(ckpt)
    task = rebuild_task(checkpoint, ckpt)
    shape = input_shape(checkpoint["preprocessing"], task.hparams.in_chans)

    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_partials(out.parent)
    with _SigtermGuard() as guard:
        # Same parent as `out`, so the final rename is atomic (same file system).
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
        try:
            # Lets a later export tell this folder, if a kill leaves it, from a live one.
            (tmp / OWNER).write_text(json.dumps({
                "tool": OWNER_TOOL, "pid": os.getpid(), "host": socket.gethostname(),
                "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}))
            write_onnx(task, tmp / MODEL, shape, opset)
            meta = build_metadata(task, checkpoint, ckpt, shape)
            meta["parity"] = check_parity(task, Bundle(tmp, meta), shape, parity_samples, tolerance, seed)
            if include_checkpoint:
                shutil.copyfile(ckpt, tmp / CHECKPOINT_COPY)
            meta["predictor"] = write_predictor(tmp, meta["input"]["reader"])
            meta = _jsonable(meta)
            (tmp / CARD).write_text(model_card(meta))
            # Seconds before the rename: unmarked, the folder is kept by age until then.
            (tmp / OWNER).unlink()
            seal(meta, tmp)
            # Last: a folder without metadata.json is never mistaken for a bundle.
            (tmp / METADATA).write_text(json.dumps(meta, indent=2, allow_nan=False) + "\n")
            load_bundle(tmp)  # the bundle as a reader sees it: schema, digest, every file
            # mkdtemp makes the folder private (0700); a bundle is meant to be copied and shared.
            umask = os.umask(0)
            os.umask(umask)
            for folder in [tmp, *(p for p in tmp.rglob("*") if p.is_dir())]:
                folder.chmod(0o777 & ~umask)
            with guard.deferred(published=out):
                _publish(tmp, out, overwrite)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return out


# ---- command line -------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="convnext-domains export",
        description="Export a checkpoint to a bundle folder (model.onnx, metadata.json, README.md) "
                    "that `convnext-domains predict --bundle` runs without torch.",
    )
    parser.add_argument("--ckpt", required=True, help="checkpoint of a convnext-domains run")
    parser.add_argument("--out", required=True, help="bundle folder to create")
    parser.add_argument("--include-checkpoint", action="store_true",
                        help="also copy the checkpoint into the bundle as model.ckpt")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing bundle at --out")
    parser.add_argument("--tolerance", type=float, default=1e-4,
                        help="largest allowed ONNX vs PyTorch probability difference (default 1e-4)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``convnext-domains export --ckpt RUN.ckpt --out DIR [--include-checkpoint] [--overwrite]``."""
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    try:
        path = export_bundle(args.ckpt, args.out, include_checkpoint=args.include_checkpoint,
                             overwrite=args.overwrite, tolerance=args.tolerance)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from err
    except ExportInterrupted as err:
        if err.published is None:
            print(f"error: export interrupted by SIGTERM; its unfinished folder was removed and "
                  f"'{args.out}' was not written", file=sys.stderr)
        else:
            print(f"error: export interrupted by SIGTERM after it finished: '{err.published}' "
                  "is a complete, verified bundle", file=sys.stderr)
        raise SystemExit(128 + signal.SIGTERM) from err
    meta = json.loads((path / METADATA).read_text())
    parity = meta["parity"]
    print(f"bundle: {path}")
    print(f"parity: max |P_onnx - P_torch| = {parity['max_abs_diff']:.3g} on {parity['samples']} "
          f"seeded inputs (tolerance {parity['tolerance']:g})")
    print("files:")
    sizes: dict[str, int] = {}
    for name in [*meta["files"], METADATA]:  # predictor/... summed into one line
        top = name.split("/")[0] + ("/" if "/" in name else "")
        sizes[top] = sizes.get(top, 0) + (path / name).stat().st_size
    for name, size in sizes.items():
        print(f"  {name:<16} {size / 1024:10.1f} KiB")
    print(f"run it without torch: pip install -r {path / REQUIREMENTS}; "
          f"python {path / LAUNCHER} INPUT... --out OUT")
    return 0


if __name__ == "__main__":
    sys.exit(main())
