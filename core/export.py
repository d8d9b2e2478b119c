"""Export a trained checkpoint to a torch-free bundle: ONNX network, metadata and model card.

``convnext-domains export --ckpt RUN.ckpt --out DIR`` rebuilds the task from the checkpoint
(no pretrained weights file or hub access needed: the state dict holds every weight), writes
``model.onnx`` (the network only: ``NCHW float32`` in, logits out), checks on seeded inputs
that ONNX Runtime gives the same probabilities as Lightning's ``predict``, and writes
``README.md`` (model card), ``metadata.json`` (schema of :mod:`core.bundle`, sealed with the
sha256 of every file) and its JSON Schema ``metadata.schema.json`` (:mod:`core.bundle_schema`).
The bundle also carries its own torch-free predictor (``predict.py``, ``requirements.txt`` and
``predictor/``, copies of the modules that its input reader declares, found through
:data:`core.readers.READERS`), so it can be handed over alone.

``--quantize int8`` makes ``model.onnx`` an INT8 dynamically quantised graph (int8 weights of
the ``MatMul``/``Gemm`` layers, activations quantised at run time; :mod:`core.quantize`). The
fp32 graph is traced and parity-checked as always first; the quantised one must load in ONNX
Runtime, is compared with Lightning on the same seeded inputs and timed against the fp32 graph,
and ``metadata.json`` (``quantization``, bundle schema 2.2; plain bundles stay 2.1) and the
model card report the figures. Export fails only when its probabilities differ by more than
``--int8-tolerance`` (default 0.05, see :data:`core.export_parity.INT8_TOLERANCE`). Detectors
are not quantised.

Everything is written into a temporary folder next to ``DIR`` and renamed into place only when
all of it succeeded, so ``DIR`` is either a complete, verified bundle or absent. SIGTERM removes
the temporary folder; one left by a killed export (SIGKILL, power loss) is removed by the next
export into the same folder once it is provably abandoned (:func:`clean_stale_partials`).

This module is the entry point and runs the steps in order; each step lives in its own module:

- :mod:`core.export_checkpoint`: read the checkpoint, rebuild the task, the input shape
- :mod:`core.export_onnx`: trace the network to ONNX (fixed-size adaptive pooling)
- :mod:`core.export_parity`: ONNX Runtime vs Lightning on seeded inputs
- :mod:`core.export_detection`: detectors instead of the two above: a one-image graph with
  torchvision's post-processing inside (boxes, scores, labels), and its parity check
- :mod:`core.export_metadata`: metadata.json (backbone, operating point, metrics, versions)
- :mod:`core.quantize`: with ``--quantize int8``, the INT8 graph, its nodes, load check and speed
- :mod:`core.model_card`: README.md from the metadata
- :mod:`core.export_modules`, :mod:`core.export_predictor`: the bundle's own predictor
- :mod:`core.export_publish`: owner files, stale partials, SIGTERM, the atomic rename

Every name these modules had here before the split is still importable from here.
"""

from __future__ import annotations

import argparse
import importlib.metadata  # noqa: F401  (kept as export.importlib: tests patch its requires)
import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.bundle import (
    LAUNCHER,
    METADATA,
    MODEL,
    QUANTIZED_SCHEMA_VERSION,
    REQUIREMENTS,
    Bundle,
    changelog,
    seal,
)
from core.bundle_schema import write_metadata_schema
from core.bundle_verify import verify_bundle
from core.errors import DataError
from core.export_checkpoint import (
    checkpoint_contract,
    input_shape,
    load_checkpoint,
    rebuild_task,
    task_kind,
)
from core.export_detection import check_detection_parity, is_detection, write_detection_onnx
from core.export_metadata import (
    VERSIONED,
    _jsonable,
    backbone_info,
    build_metadata,
    decision_info,
    run_metrics,
)
from core.export_modules import (
    PROJECT_PACKAGES,
    predictor_modules,
    reader_packages,
)
from core.export_modules import _imports as _imports  # tests reach it here, as before the split
from core.export_modules import module_source as _module_source  # noqa: F401  (likewise)
from core.export_onnx import FixedAdaptiveAvgPool2d, exportable_pools, write_onnx
from core.export_parity import (
    INT8_TOLERANCE,
    PARITY_INPUTS,
    check_int8_parity,
    check_parity,
    lightning_probabilities,
    parity_inputs,
)
from core.export_predictor import (
    DISTRIBUTION,
    LAUNCHER_SOURCE,
    predictor_requirements,
    write_predictor,
)
from core.export_publish import (
    CARD,
    CHECKPOINT_COPY,
    OWNER,
    OWNER_TOOL,
    STALE_AFTER_S,
    ExportInterrupted,
    _check_target,
    _publish,
    _SigtermGuard,
    clean_stale_partials,
    make_shareable,
    write_owner,
)
from core.model_card import model_card
from core.quantize import (
    DEFAULT_OP_TYPES,
    METHOD,
    check_loads,
    compare_speed,
    quantize_int8,
    quantized_nodes,
)
from core.readers import READERS

__all__ = [
    "CARD", "CHECKPOINT_COPY", "DISTRIBUTION", "LAUNCHER_SOURCE", "OWNER", "OWNER_TOOL",
    "INT8_TOLERANCE", "PARITY_INPUTS", "PROJECT_PACKAGES", "QUANTIZE_MODES", "STALE_AFTER_S",
    "VERSIONED",
    "ExportInterrupted", "FixedAdaptiveAvgPool2d",
    "backbone_info", "build_metadata", "build_parser", "check_parity", "checkpoint_contract",
    "clean_stale_partials",
    "decision_info", "export_bundle", "exportable_pools", "input_shape", "lightning_probabilities",
    "load_checkpoint", "main", "model_card", "predictor_modules", "predictor_requirements",
    "reader_packages", "rebuild_task", "run_metrics", "task_kind", "write_onnx",
    "write_predictor",
]


#: Values of ``--quantize``: ``none`` keeps the fp32 graph, ``int8`` quantises it (see above).
QUANTIZE_MODES = ("none", "int8")


# ---- the export ---------------------------------------------------------------------------
def export_bundle(
    ckpt: str | Path,
    out: str | Path,
    include_checkpoint: bool = False,
    overwrite: bool = False,
    parity_samples: int = 4,
    tolerance: float = 1e-4,
    opset: int = 17,
    seed: int = 0,
    box_tolerance: float = 1e-3,
    quantize: str = "none",
    int8_tolerance: float = INT8_TOLERANCE,
) -> Path:
    """Export a checkpoint to a verified bundle folder.

    Args:
        ckpt: checkpoint of a convnext-domains run (it carries ``task_class`` and ``preprocessing``).
        out: bundle folder to create.
        include_checkpoint: also copy the checkpoint as ``model.ckpt`` (for further training).
        overwrite: replace an existing bundle at ``out``.
        parity_samples: seeded random inputs on which ONNX Runtime must match Lightning.
        tolerance: largest allowed absolute difference of probabilities (of detection scores
            for detectors).
        opset: ONNX opset.
        seed: seed of the parity inputs.
        box_tolerance: detectors: largest allowed difference of box coordinates, in pixels.
        quantize: ``"none"`` (fp32 ``model.onnx``) or ``"int8"`` (INT8 dynamically quantised
            ``model.onnx``, reported in ``metadata.json`` ``quantization``; not for detectors).
        int8_tolerance: with ``quantize="int8"``: largest allowed absolute difference of the
            quantised model's probabilities from Lightning's (the fp32 graph still has to meet
            ``tolerance`` first).

    Returns:
        The bundle folder.

    Raises:
        DataError: not a convnext-domains checkpoint, ``out`` exists, the parity check failed,
            or ``quantize="int8"`` cannot be done (a detector, no layer to quantise, a model the
            installed onnxruntime cannot run, a difference above ``int8_tolerance``). Nothing
            is left at ``out`` (nor any temporary folder) on failure.
        ExportInterrupted: SIGTERM arrived (the temporary folder is removed first; if it came
            during the final rename, the finished bundle is at ``out`` and ``published`` says so).
    """
    ckpt, out = Path(ckpt).expanduser(), Path(out).expanduser().absolute()
    if quantize not in QUANTIZE_MODES:
        raise DataError(f"quantize must be one of {', '.join(QUANTIZE_MODES)}, got {quantize!r}")
    _check_target(out, overwrite)  # fail before minutes of work, checked again at the rename
    try:
        import onnxruntime  # noqa: F401
    except ImportError as err:
        raise DataError("export needs onnxruntime: pip install 'convnext-domains[export]'") from err
    checkpoint = load_checkpoint(ckpt)
    task = rebuild_task(checkpoint, ckpt)
    contract = checkpoint_contract(checkpoint, ckpt)
    shape = input_shape(contract, task.hparams.in_chans)
    if contract.class_names and list(contract.class_names) != list(task.class_names):
        raise DataError(f"checkpoint '{ckpt}': its input contract names classes "
                        f"{list(contract.class_names)} but its model {list(task.class_names)}")
    if quantize == "int8" and is_detection(task):
        raise DataError(f"checkpoint '{ckpt}' is a {task.kind} detector: --quantize int8 is not "
                        "supported for detection bundles (their graph holds torchvision's "
                        "post-processing, whose INT8 behaviour is not checked); export it without "
                        "--quantize")

    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_partials(out.parent)
    with _SigtermGuard() as guard:
        # Same parent as `out`, so the final rename is atomic (same file system).
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
        try:
            write_owner(tmp)
            meta = build_metadata(task, checkpoint, contract, ckpt)
            if is_detection(task):
                write_detection_onnx(task, tmp / MODEL, shape, opset)
                meta["parity"] = check_detection_parity(
                    task, Bundle(tmp, meta, _contract=contract), shape, parity_samples, tolerance,
                    box_tolerance, seed)
            else:
                write_onnx(task, tmp / MODEL, shape, opset)
                # Looked up here, so replacing export.lightning_probabilities works.
                meta["parity"] = check_parity(task, Bundle(tmp, meta), shape, parity_samples,
                                              tolerance, seed, reference=lightning_probabilities)
                if quantize == "int8":
                    meta["quantization"] = _quantize_model(task, tmp, meta, shape, parity_samples,
                                                           int8_tolerance, seed)
                    # The first version with the key, so 2.1 bundles stay exactly as they were.
                    meta["schema_version"] = QUANTIZED_SCHEMA_VERSION
                    meta["changelog"] = changelog(QUANTIZED_SCHEMA_VERSION)
            if include_checkpoint:
                shutil.copyfile(ckpt, tmp / CHECKPOINT_COPY)
            meta["predictor"] = write_predictor(tmp, contract.reader)
            meta = _jsonable(meta)
            (tmp / CARD).write_text(model_card(meta))
            write_metadata_schema(tmp, READERS[contract.reader], meta["schema_version"])
            # Seconds before the rename: unmarked, the folder is kept by age until then.
            (tmp / OWNER).unlink()
            seal(meta, tmp)
            # Last: a folder without metadata.json is never mistaken for a bundle.
            (tmp / METADATA).write_text(json.dumps(meta, indent=2, allow_nan=False) + "\n")
            verify_bundle(tmp)  # as a receiver checks it: JSON Schema, contract, digest, every file
            make_shareable(tmp)  # mkdtemp made it private (0700)
            with guard.deferred(published=out):
                _publish(tmp, out, overwrite)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return out


def _quantize_model(task: Any, folder: Path, meta: dict[str, Any], shape: Sequence[int],
                    samples: int, tolerance: float, seed: int) -> dict[str, Any]:
    """Replace ``folder/model.onnx`` (the parity-checked fp32 graph) by its INT8 version and
    return the ``quantization`` record of metadata.json; raise DataError, leaving the fp32
    graph in place, when that cannot be done."""
    work = folder / ".int8"  # removed below, before anything is sealed
    work.mkdir()
    try:
        int8 = quantize_int8(folder / MODEL, work / MODEL)
        count, float_nodes = quantized_nodes(int8)
        if not count:
            raise DataError(
                f"--quantize int8 found no {'/'.join(DEFAULT_OP_TYPES)} layer to quantise in this "
                f"{meta['task']} network (float layers: {float_nodes}); export it without --quantize")
        try:
            check_loads(int8)
        except ValueError as err:
            raise DataError(str(err)) from None
        parity = check_int8_parity(task, Bundle(work, meta), shape, samples, tolerance, seed,
                                   reference=lightning_probabilities,
                                   multilabel=meta["task"] == "multilabel")
        speed = compare_speed(folder / MODEL, int8, parity_inputs(shape, samples, seed).numpy())
        os.replace(int8, folder / MODEL)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"mode": "int8", "method": METHOD, "op_types": list(DEFAULT_OP_TYPES), "per_channel": False,
            "quantized_nodes": count, "float_nodes": float_nodes, **parity,
            "fp32_max_prob_diff": meta["parity"]["max_abs_diff"], "speed": speed}


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
                        help="largest allowed ONNX vs PyTorch probability difference, detection "
                             "scores for detectors (default 1e-4)")
    parser.add_argument("--box-tolerance", type=float, default=1e-3,
                        help="detectors: largest allowed ONNX vs PyTorch box coordinate "
                             "difference in pixels (default 1e-3)")
    parser.add_argument("--quantize", choices=QUANTIZE_MODES, default="none",
                        help="int8: model.onnx is INT8 dynamically quantised (int8 MatMul/Gemm "
                             "weights, activations quantised at run time), checked against "
                             "PyTorch and timed against fp32, figures in metadata.json and the "
                             "model card; not for detectors (default none: fp32)")
    parser.add_argument("--int8-tolerance", type=float, default=INT8_TOLERANCE,
                        help="with --quantize int8: largest allowed INT8 vs PyTorch probability "
                             f"difference (default {INT8_TOLERANCE:g}; the measured one is reported)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``convnext-domains export --ckpt RUN.ckpt --out DIR [--include-checkpoint] [--overwrite]
    [--quantize int8]``."""
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    try:
        path = export_bundle(args.ckpt, args.out, include_checkpoint=args.include_checkpoint,
                             overwrite=args.overwrite, tolerance=args.tolerance,
                             box_tolerance=args.box_tolerance, quantize=args.quantize,
                             int8_tolerance=args.int8_tolerance)
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
    if meta["task"] == "detection":
        print(f"parity: {sum(parity['detections'])} detection(s) on {parity['samples']} seeded "
              f"inputs, same count and labels; max box difference {parity['max_box_diff_px']:.3g} "
              f"px (tolerance {parity['box_tolerance_px']:g}), max score difference "
              f"{parity['max_score_diff']:.3g} (tolerance {parity['score_tolerance']:g})")
    else:
        print(f"parity: max |P_onnx - P_torch| = {parity['max_abs_diff']:.3g} on "
              f"{parity['samples']} seeded inputs (tolerance {parity['tolerance']:g})"
              + (" (fp32 graph, before quantisation)" if meta.get("quantization") else ""))
    quantization = meta.get("quantization")
    if quantization:
        speed = quantization["speed"]
        print(f"int8: {quantization['quantized_nodes']} {'/'.join(quantization['op_types'])} node(s) "
              f"quantised; max |P_int8 - P_torch| = {quantization['max_prob_diff']:.3g} (fp32 "
              f"{quantization['fp32_max_prob_diff']:.3g}, tolerance {quantization['tolerance']:g}), "
              f"top-1 agreement {quantization['top1_agreement']:.3f}; "
              f"{speed['int8_ms_per_image']:.3g} ms/image vs fp32 {speed['fp32_ms_per_image']:.3g} "
              f"({speed['speedup']:.2f}x) at batch {speed['batch']} on this machine")
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
