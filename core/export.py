"""Export a trained checkpoint to a torch-free bundle: ONNX network, metadata and model card.

``convnext-domains export --ckpt RUN.ckpt --out DIR`` rebuilds the task from the checkpoint
(no pretrained weights file or hub access needed: the state dict holds every weight), writes
``model.onnx`` (the network only: ``NCHW float32`` in, logits out), checks on seeded inputs
that ONNX Runtime gives the same probabilities as Lightning's ``predict``, and writes
``README.md`` (model card) and ``metadata.json`` (schema of :mod:`core.bundle`, sealed with
the sha256 of every file). Everything is written into a temporary folder next to ``DIR`` and
renamed into place only when all of it succeeded, so ``DIR`` is either a complete, verified
bundle or absent.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.metadata
import json
import logging
import math
import os
import platform
import shutil
import sys
import tempfile
import uuid
import warnings
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from core.bundle import METADATA, MODEL, SCHEMA_VERSION, Bundle, load_bundle, seal
from core.errors import DataError

log = logging.getLogger(__name__)

CHECKPOINT_COPY = "model.ckpt"
CARD = "README.md"
PARITY_INPUTS = "seeded standard normal in normalised space"
VERSIONED = ("convnext-domains", "torch", "lightning", "timm", "onnx", "onnxruntime", "numpy")
# Readers whose inputs need an optional package besides onnxruntime, numpy and pillow.
READER_EXTRAS = {"dicom": "pydicom", "geotiff_scene": "rasterio", "geotiff_patch": "rasterio"}


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
    if pretrained in (False, None, "", "false", "False"):
        origin, licence = "none", "no pretrained weights (trained from scratch)"
    elif pretrained is True or str(pretrained).lower() == "true":
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
    extra = READER_EXTRAS.get(reader)
    lines += [
        "",
        "## How to run",
        "",
        "Without torch:",
        "",
        "```bash",
        "pip install onnxruntime numpy pillow" + (f" {extra}" if extra else ""),
        "convnext-domains predict --bundle DIR INPUT... --out OUT",
        "```",
        "",
        f"Backbone: {backbone['name']}, depths {_fmt(backbone['depths'])}, dims {_fmt(backbone['dims'])}, "
        f"{backbone['in_chans']} input channels.",
        "",
    ]
    return "\n".join(lines)


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
    # Same parent as `out`, so the final rename is atomic (same file system).
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        write_onnx(task, tmp / MODEL, shape, opset)
        meta = build_metadata(task, checkpoint, ckpt, shape)
        meta["parity"] = check_parity(task, Bundle(tmp, meta), shape, parity_samples, tolerance, seed)
        if include_checkpoint:
            shutil.copyfile(ckpt, tmp / CHECKPOINT_COPY)
        meta = _jsonable(meta)
        (tmp / CARD).write_text(model_card(meta))
        seal(meta, tmp)
        # Last: a folder without metadata.json is never mistaken for a bundle.
        (tmp / METADATA).write_text(json.dumps(meta, indent=2, allow_nan=False) + "\n")
        load_bundle(tmp)  # the bundle as a reader sees it: schema, digest, every file
        # mkdtemp makes the folder private (0700); a bundle is meant to be copied and shared.
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)
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
    meta = json.loads((path / METADATA).read_text())
    parity = meta["parity"]
    print(f"bundle: {path}")
    print(f"parity: max |P_onnx - P_torch| = {parity['max_abs_diff']:.3g} on {parity['samples']} "
          f"seeded inputs (tolerance {parity['tolerance']:g})")
    print("files:")
    for name in [*meta["files"], METADATA]:
        print(f"  {name:<14} {(path / name).stat().st_size / 1024:10.1f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
