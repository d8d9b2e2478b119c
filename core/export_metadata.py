"""Export, step 4: the metadata.json of a bundle (before parity, predictor and file digests).

What the model is (task, classes, backbone, weights origin), what it expects (the checkpoint's
typed input contract, with the network tensor's shape and layout), how it decides (operating
point), how well it did (the run's metrics.json) and what it was built with (package versions).
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import math
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from core.bundle import SCHEMA_FILE, SCHEMA_VERSION, changelog
from core.contracts import InputContract
from core.export_checkpoint import task_kind
from core.export_detection import detection_decision, detection_info, output_names
from core.weights import parse_pretrained

# The export's one logger, named as before the split so that log filters keep working.
log = logging.getLogger("core.export")

VERSIONED = ("convnext-domains", "torch", "lightning", "timm", "onnx", "onnxruntime", "numpy")


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
    """The test report (``metrics.json``) of this checkpoint, or None.

    ``convnext-domains test`` writes its report into a new version folder beside the training
    run, recording the checkpoint it evaluated; the newest report of this checkpoint wins. A
    report that names another checkpoint is never used; one that names none (older runs, or the
    fit-then-test of the same run) counts when it sits in the checkpoint's own run folder.
    """
    ckpt = Path(ckpt).resolve()
    run = ckpt.parent.parent
    own = [run / "metrics.json", ckpt.parent / "metrics.json"]
    candidates = sorted({*own, *run.parent.glob("*/metrics.json")},
                        key=lambda p: p.stat().st_mtime if p.is_file() else 0.0, reverse=True)
    for path in candidates:
        if not path.is_file():
            continue
        try:
            report = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            log.warning("ignoring unreadable %s: %s", path, err)
            continue
        recorded = report.get("checkpoint") if isinstance(report, dict) else None
        if recorded == str(ckpt) or (recorded is None and path in own):
            return report
    return None


def build_metadata(task: nn.Module, checkpoint: dict[str, Any], contract: InputContract,
                   ckpt: Path) -> dict[str, Any]:
    """metadata.json (schema :data:`~core.bundle.SCHEMA_VERSION`) without ``parity``,
    ``predictor``, ``files`` and ``metadata_sha256``."""
    kind = task_kind(task)
    parts = str(checkpoint["task_class"]).split(".")
    if kind == "detection":
        output = {"name": "detections", "outputs": output_names(task),
                  "shape": "1 image per run -> boxes N,4; scores N; labels N"
                           + ("; masks N,1,H,W" if "masks" in output_names(task) else "")}
        decision = detection_decision(task)
        detection = detection_info(task, checkpoint.get("datamodule_hyper_parameters"))
    else:
        output = {"name": "logits", "activation": "sigmoid" if kind == "multilabel" else "softmax",
                  "shape": "N,K,H,W" if kind == "segmentation" else "N,K"}
        decision, detection = decision_info(task), None
    return {
        "$schema": SCHEMA_FILE,
        "schema_version": SCHEMA_VERSION,
        "changelog": changelog(SCHEMA_VERSION),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "domain": parts[1] if parts[0] == "domains" and len(parts) > 2 else "core",
        "task": kind,
        "task_class": checkpoint["task_class"],
        "class_names": list(task.class_names),
        "input": contract.to_json(),
        "output": output,
        "decision": decision,
        "detection": detection,
        "metrics": run_metrics(ckpt),
        "training_data": checkpoint.get("data_fingerprint"),
        "versions": {**{p: _version(p) for p in VERSIONED}, "python": platform.python_version()},
        "backbone": backbone_info(task, checkpoint["hyper_parameters"].get("pretrained", False)),
    }
