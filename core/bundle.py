"""Export bundles: the schema, integrity checks and loading. numpy, json and onnxruntime only.

A bundle directory holds ``model.onnx`` (the network: input ``NCHW float32`` -> logits),
``metadata.json`` (this schema), ``README.md`` (model card), optionally ``model.ckpt``, and the
self-contained predictor: ``predict.py``, ``requirements.txt`` and ``predictor/`` (copies of
the torch-free project modules). ``metadata.json`` lists the sha256 of every other file, in
subfolders too, and carries a digest of itself, so a changed file, a tampered predictor or a
hand-edited threshold is noticed before anything runs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from core.errors import DataError

SCHEMA_VERSION = "1.0"
METADATA = "metadata.json"
MODEL = "model.onnx"
# The self-contained predictor (see core.export.write_predictor).
LAUNCHER = "predict.py"
REQUIREMENTS = "requirements.txt"
PREDICTOR = "predictor"


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
    """A verified bundle; :attr:`session` runs the network with ONNX Runtime."""

    path: Path
    meta: dict[str, Any]
    _session: Any = field(default=None, repr=False)

    @property
    def session(self):
        if self._session is None:
            import onnxruntime as ort

            self._session = ort.InferenceSession(str(self.path / MODEL), providers=["CPUExecutionProvider"])
        return self._session

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Network output for an ``NCHW float32`` batch."""
        name = self.session.get_inputs()[0].name
        return self.session.run(None, {name: np.ascontiguousarray(batch, dtype=np.float32)})[0]

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        return activate(self.logits(batch), self.meta["output"]["activation"])


def load_bundle(path: str | Path) -> Bundle:
    """Open a bundle after checking its schema version and every file's sha256."""
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
    if version.split(".")[0] != SCHEMA_VERSION.split(".")[0]:
        raise BundleError(f"bundle '{folder}' has schema version {version or 'none'}; this "
                          f"convnext-domains reads {SCHEMA_VERSION.split('.')[0]}.x: re-export it "
                          "with a matching version or upgrade convnext-domains")
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
    return Bundle(folder, meta)
