"""The JSON Schema of a bundle's ``metadata.json`` (schema 2.x), written into the bundle as
``metadata.schema.json`` and checked by ``convnext-domains bundle verify``.

The ``input`` part is the JSON Schema of the bundle reader's contract class, so a reader from
any package describes its own keys; the rest is the same for every bundle of a version. This
code writes two: 2.1 (plain bundles) and 2.2 (INT8 bundles: 2.1 plus the ``quantization`` key).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from core.bundle import (
    QUANTIZED_SCHEMA_VERSION,
    SCHEMA_FILE,
    SCHEMA_VERSION,
    WRITTEN_VERSIONS,
    changelog,
)
from core.json_schema import DIALECT
from core.readers import InputReader

_STRING = {"type": "string"}
_INTEGER = {"type": "integer"}
_NUMBER = {"type": "number"}
_STRINGS = {"type": "array", "items": _STRING}
_INTEGERS = {"type": "array", "items": _INTEGER}
_STRING_MAP = {"type": "object", "additionalProperties": _STRING}
_DETECTION_OUTPUTS = {"anyOf": [{"const": ["boxes", "scores", "labels"]},
                                {"const": ["boxes", "scores", "labels", "masks"]}]}


def _object(properties: dict[str, Any], nullable: bool = False) -> dict[str, Any]:
    """A closed object: every listed key required, no other key."""
    return {"type": ["object", "null"] if nullable else "object", "properties": properties,
            "required": list(properties), "additionalProperties": False}


# export --quantize int8: what was quantised and how far it moved the outputs (core.export).
_QUANTIZATION = _object({
    "mode": {"const": "int8"}, "method": _STRING, "op_types": _STRINGS,
    "per_channel": {"type": "boolean"}, "quantized_nodes": _INTEGER,
    "float_nodes": {"type": "object", "additionalProperties": _INTEGER},
    "samples": _INTEGER, "inputs": _STRING, "max_prob_diff": _NUMBER, "top1_agreement": _NUMBER,
    "tolerance": _NUMBER, "fp32_max_prob_diff": _NUMBER,
    "speed": _object({"fp32_ms_per_image": _NUMBER, "int8_ms_per_image": _NUMBER,
                      "speedup": _NUMBER, "batch": _INTEGER, "rounds": _INTEGER,
                      "cpu_cores": _INTEGER}),
})


def metadata_schema(reader: InputReader, version: str = SCHEMA_VERSION) -> dict[str, Any]:
    """The JSON Schema of the metadata.json of a bundle whose inputs ``reader`` reads, in one of
    the versions this code writes (:data:`~core.bundle.WRITTEN_VERSIONS`)."""
    if version not in WRITTEN_VERSIONS:
        raise ValueError(f"schema version {version!r} is not one this code writes "
                         f"({', '.join(WRITTEN_VERSIONS)})")
    contract = reader.contract_class.json_schema()
    input_schema = {**contract, "properties": {**contract["properties"], "reader": {"const": reader.name}}}
    properties = {
        "$schema": {"const": SCHEMA_FILE},
        "schema_version": {"const": version},
        "changelog": {"type": "object", "additionalProperties": _STRING},
        "created": _STRING,
        "domain": _STRING,
        "task": {"enum": ["classification", "multilabel", "segmentation", "detection"]},
        "task_class": _STRING,
        "class_names": _STRINGS,
        "input": input_schema,
        "output": {"anyOf": [
            _object({"name": {"const": "logits"}, "activation": {"enum": ["softmax", "sigmoid"]},
                     "shape": {"enum": ["N,K", "N,K,H,W"]}}),
            _object({"name": {"const": "detections"}, "outputs": _DETECTION_OUTPUTS, "shape": _STRING}),
        ]},
        "decision": {"anyOf": [
            _object({
                "positive_classes": _STRINGS, "positive_index": _INTEGERS,
                "threshold": {"type": ["number", "null"]},
                "target_recall": {"anyOf": [_NUMBER, {"const": "youden"}, {"type": "null"}]},
                "rule": _STRING, "metric_names": _STRING_MAP,
            }, nullable=True),
            # A detector's operating point: one score threshold for every class.
            _object({"threshold": {"type": ["number", "null"]},
                     "target_recall": {"type": ["number", "null"]},
                     "rule": _STRING, "metric_names": _STRING_MAP}),
        ]},
        "detection": _object({
            "detector": {"enum": ["fcos", "retinanet", "faster_rcnn", "mask_rcnn"]},
            "score_thresh": _NUMBER, "nms_thresh": _NUMBER, "detections_per_img": _INTEGER,
            "outputs": _DETECTION_OUTPUTS, "box_format": _STRING, "labels": _STRING,
            "images_per_run": {"const": 1},
            # How a tiled reader merges tile detections across borders: the training
            # datamodule's settings, or null (the reader's defaults).
            "tile_merge": _object({"nms_iou": _NUMBER, "edge_margin": _NUMBER}, nullable=True),
        }, nullable=True),
        # The run's test report and data fingerprint: free-form, absent for hand-made checkpoints.
        "metrics": {"type": ["object", "null"]},
        "training_data": {"type": ["object", "null"]},
        "versions": {"type": "object", "additionalProperties": _STRING},
        "backbone": _object({"name": _STRING, "depths": _INTEGERS, "dims": _INTEGERS, "in_chans": _INTEGER,
                             "pretrained": _STRING, "weight_licence": _STRING}),
        "parity": {"anyOf": [
            _object({"max_abs_diff": _NUMBER, "samples": _INTEGER, "tolerance": _NUMBER,
                     "inputs": _STRING}),
            _object({"samples": _INTEGER, "inputs": _STRING, "detections": _INTEGERS,
                     "max_box_diff_px": _NUMBER, "max_score_diff": _NUMBER,
                     "max_mask_diff": {"type": ["number", "null"]},
                     "box_tolerance_px": _NUMBER, "score_tolerance": _NUMBER}),
        ]},
        "predictor": _object({"command": _STRING, "requirements": _STRINGS, "modules": _STRINGS,
                              "python": _STRING}),
        "files": {"type": "object", "additionalProperties": _STRING},
        "metadata_sha256": _STRING,
    }
    if version == QUANTIZED_SCHEMA_VERSION:
        properties["quantization"] = _QUANTIZATION
    return {
        "$schema": DIALECT,
        "$id": SCHEMA_FILE,
        "title": f"convnext-domains bundle metadata, schema {version}",
        "description": "; ".join(f"{v}: {text}" for v, text in changelog(version).items()),
        **_object(properties),
    }


def write_metadata_schema(folder: Path, reader: InputReader, version: str = SCHEMA_VERSION) -> Path:
    """Write ``metadata.schema.json`` (schema ``version``) for a bundle read by ``reader`` into
    ``folder``."""
    path = folder / SCHEMA_FILE
    path.write_text(json.dumps(metadata_schema(reader, version), indent=2) + "\n")
    return path
