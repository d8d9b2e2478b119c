"""Export bundles: the schema, integrity checks and loading. numpy, json and onnxruntime only.

A bundle directory holds ``model.onnx`` (the network: input ``NCHW float32`` -> logits; for
detectors one image -> boxes, scores, labels, see :mod:`core.export_detection`),
``metadata.json`` (this schema), ``metadata.schema.json`` (its JSON Schema, since 2.0),
``README.md`` (model card), optionally ``model.ckpt``, and the self-contained predictor:
``predict.py``, ``requirements.txt`` and ``predictor/`` (copies of the torch-free project
modules). ``metadata.json`` lists the sha256 of every other file, in subfolders too, and carries
a digest of itself, so a changed file, a tampered predictor or a hand-edited threshold is
noticed before anything runs. Its ``input`` is the typed contract of the bundle's reader
(:mod:`core.contracts`), checked on every load. ``model.onnx`` may be an INT8 dynamically
quantised graph (``export --quantize int8``, schema 2.2); its ``quantization`` key says so and
loading needs no change, as ONNX Runtime runs either. Plain bundles stay schema 2.1.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from core.contracts import ContractError, InputContract, schema_major
from core.errors import DataError
from core.readers import read_contract

# A bundle states the lowest version that describes it, so readers of that version can check
# it: plain bundles are 2.1, INT8 ones (the only ones with a 2.2 feature) are 2.2.
SCHEMA_VERSION = "2.1"
QUANTIZED_SCHEMA_VERSION = "2.2"
#: The versions this code writes (their JSON Schema must be exactly the one it writes).
WRITTEN_VERSIONS = (SCHEMA_VERSION, QUANTIZED_SCHEMA_VERSION)
# What each schema version changed; the JSON Schema file of a bundle repeats it.
SCHEMA_CHANGELOG: dict[str, str] = {
    "2.2": "model.onnx is INT8 dynamically quantised (export --quantize int8); the quantization "
           "key holds the quantisation (mode, operators, nodes) and its measured probability "
           "difference and top-1 agreement against PyTorch and speed against fp32. Bundles "
           "without it stay 2.1",
    "2.1": "task detection: model.onnx takes one image and outputs boxes, scores, labels; the "
           "detection key (null for other tasks) holds the detector and its post-processing; "
           "output, decision and parity have a detection form",
    "2.0": "input is the typed contract of its reader: every field present, no others; image_size "
           "is the network input size for every reader (the scene reader's tile_size is gone); "
           "metadata.schema.json describes metadata.json, named by its $schema key",
    "1.0": "first layout: input holds the datamodule's preprocessing keys",
}
# Major versions this version reads (1.x bundles are upgraded in memory, never rewritten).
READABLE_MAJORS = (1, 2)
METADATA = "metadata.json"
SCHEMA_FILE = "metadata.schema.json"
MODEL = "model.onnx"
# The self-contained predictor (see core.export.write_predictor).
LAUNCHER = "predict.py"
REQUIREMENTS = "requirements.txt"
PREDICTOR = "predictor"


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def changelog(version: str) -> dict[str, str]:
    """The :data:`SCHEMA_CHANGELOG` entries up to and including ``version``, newest first."""
    return {v: text for v, text in SCHEMA_CHANGELOG.items() if _version_key(v) <= _version_key(version)}


def execution_providers(available: list[str]) -> list[str]:
    """ONNX Runtime providers for a bundle: CUDA first where the installed onnxruntime has it
    (``onnxruntime-gpu`` on a machine with a GPU), the CPU always as the fallback."""
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available] \
        or ["CPUExecutionProvider"]


class BundleError(DataError):
    """A bundle that is missing, tampered with or of an unknown schema."""


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def metadata_digest(meta: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of ``meta`` without its own ``metadata_sha256`` entry."""
    body = {k: v for k, v in meta.items() if k != "metadata_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def bundle_files(folder: Path) -> list[str]:
    """Every file under ``folder`` except metadata.json, as sorted relative POSIX paths."""
    names = (p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    return sorted(n for n in names if n != METADATA)


def seal(meta: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Record the sha256 of every file under ``folder`` (except metadata.json) and the digest."""
    meta["files"] = {name: sha256_file(folder / name) for name in bundle_files(folder)}
    meta["metadata_sha256"] = metadata_digest(meta)
    return meta


def _inside(name: str) -> bool:
    """Whether a listed file name is a plain relative path that stays inside the bundle."""
    path = PurePosixPath(name)
    return (bool(name) and "\\" not in name and not path.is_absolute()
            and all(part not in ("", ".", "..") for part in name.split("/")))


def softmax(logits: np.ndarray, axis: int = 1) -> np.ndarray:
    shifted = logits - logits.max(axis=axis, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=axis, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits))


def activate(logits: np.ndarray, activation: str) -> np.ndarray:
    """Probabilities from logits, as the task computes them."""
    return sigmoid(logits) if activation == "sigmoid" else softmax(logits, axis=1)


@dataclass
class Bundle:
    """A verified bundle; :attr:`session` runs the network with ONNX Runtime and
    :attr:`contract` says how its inputs are read."""

    path: Path
    meta: dict[str, Any]
    _session: Any = field(default=None, repr=False)
    _contract: InputContract | None = field(default=None, repr=False)

    @property
    def contract(self) -> InputContract:
        """The typed input contract of ``meta["input"]``, read with the bundle's schema version."""
        if self._contract is None:
            self._contract = read_contract(self.meta.get("input"), str(self.meta.get("schema_version")))
        return self._contract

    @property
    def session(self):
        if self._session is None:
            import onnxruntime as ort

            options = ort.SessionOptions()
            # Errors only: a detector's graph makes ONNX Runtime warn about every output whose
            # size (the detection count) differs from the traced one, which is by design.
            options.log_severity_level = 3
            self._session = ort.InferenceSession(str(self.path / MODEL), options,
                                                 providers=execution_providers(ort.get_available_providers()))
        return self._session

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Network output for an ``NCHW float32`` batch."""
        name = self.session.get_inputs()[0].name
        return self.session.run(None, {name: np.ascontiguousarray(batch, dtype=np.float32)})[0]

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        return activate(self.logits(batch), self.meta["output"]["activation"])


def load_bundle(path: str | Path) -> Bundle:
    """Open a bundle after checking its schema version, its digest, every file's sha256 and
    its input contract (a missing or unknown key is an error naming it)."""
    folder = Path(path).expanduser()
    meta_path = folder / METADATA
    if not meta_path.is_file():
        raise BundleError(f"'{folder}' is not an export bundle (no {METADATA}); export one with "
                          "convnext-domains export --ckpt RUN.ckpt --out DIR")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BundleError(f"{meta_path} is not valid JSON ({err}); re-export the bundle") from err
    if not isinstance(meta, dict):
        raise BundleError(f"{meta_path} does not hold a JSON object; re-export the bundle")
    version = str(meta.get("schema_version", ""))
    try:
        readable = schema_major(version) in READABLE_MAJORS
    except ContractError:
        readable = False
    if not readable:
        majors = ", ".join(f"{m}.x" for m in READABLE_MAJORS)
        raise BundleError(f"bundle '{folder}' has schema version {version or 'none'}; this "
                          f"convnext-domains reads {majors}: re-export it with a matching version "
                          "or upgrade convnext-domains")
    if meta.get("metadata_sha256") != metadata_digest(meta):
        raise BundleError(f"{meta_path} was modified after export (its digest does not match); "
                          "override thresholds on the command line instead, or re-export")
    files = meta.get("files") or {}
    if MODEL not in files:
        raise BundleError(f"bundle '{folder}' lists no {MODEL}; re-export it")
    for name, expected in files.items():
        if not _inside(name):
            raise BundleError(f"{meta_path} lists '{name}', which is not a file of the bundle folder")
        file = folder / name
        if not file.is_file():
            raise BundleError(f"bundle '{folder}' is missing {name}; copy the whole bundle folder")
        if sha256_file(file) != expected:
            raise BundleError(f"{file} does not match the sha256 recorded at export: the bundle was "
                              "modified or corrupted; copy it again from the original")
    try:
        contract = read_contract(meta.get("input"), version)
    except ContractError as err:
        raise BundleError(f"{meta_path}: {err}; re-export the bundle with this version of "
                          "convnext-domains") from err
    return Bundle(folder, meta, _contract=contract)
