"""``convnext-domains predict --bundle DIR INPUT... --out OUT``: run a bundle without torch.

Imports only numpy, PIL and onnxruntime; the bundle's input reader (:mod:`core.readers`, found
by the name in its metadata) brings what it needs, such as pydicom or rasterio. The inputs are
read and preprocessed by the same functions the training pipeline evaluates with. Export copies
this module, the reader's modules and their imports into each bundle (``predictor/``) and
writes its ``requirements.txt``, so ``python BUNDLE/predict.py`` runs the same code without a
project checkout. Every output file is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.atomic import write_atomic
from core.bundle import Bundle, load_bundle
from core.contracts import InputContract
from core.errors import DataError
from core.predict_detection import detect_files, detect_scenes
from core.preprocess import expand_inputs, to_network_input
from core.readers import MASK_SUFFIX, PREDICTIONS_CSV, PREDICTIONS_JSON, READERS, InputReader

log = logging.getLogger(__name__)

# Always needed: this module and its module-level imports, and these distributions.
PREDICTOR_MODULES = ("core.predict_bundle",)
BASE_PACKAGES = ("onnxruntime", "numpy", "pillow")


def _reader(contract: InputContract) -> InputReader:
    return READERS[contract.reader]


def _read(reader: InputReader, path: Path, contract: InputContract) -> np.ndarray:
    try:
        return reader.read(path, contract)
    except ModuleNotFoundError as err:
        # The reader imports its packages (pydicom, rasterio) only when it reads.
        hint = f" or pip install 'convnext-domains[{reader.extra}]'" if reader.extra else ""
        raise DataError(f"reading '{path}' with the '{reader.name}' reader needs module {err.name}; "
                        f"install the bundle's requirements: pip install -r DIR/requirements.txt"
                        f"{hint}") from err


def read_input(path: Path, contract: InputContract) -> tuple[np.ndarray, str]:
    """One input as HWC float32 with the bundle's reader, and its id for the outputs."""
    return _read(_reader(contract), path, contract), str(path)


def input_batch(files: list[Path], contract: InputContract) -> tuple[np.ndarray, list[str]]:
    """Read and preprocess files into one NCHW batch, with their ids."""
    reader = _reader(contract)
    batch = np.stack([to_network_input(_read(reader, f, contract), contract.size, contract.mean,
                                       contract.std) for f in files])
    return batch, [str(f) for f in files]


def _batches(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def classify(bundle: Bundle, files: list[Path], out: Path, threshold: float | None,
             batch_size: int) -> dict[str, Path]:
    """Class probabilities and decisions for each file -> predictions.csv and .json."""
    meta, contract = bundle.meta, bundle.contract
    names = meta["class_names"]
    decision = meta.get("decision") or {}
    multilabel = meta["task"] == "multilabel"
    cut = threshold if threshold is not None else decision.get("threshold")
    source = "command line" if threshold is not None else "bundle metadata"
    if cut is None:
        cut, source = 0.5, "default 0.5: the bundle stores no operating point"
        if decision or multilabel:
            log.warning("%s has no stored threshold: deciding at 0.5 (give --threshold to choose)",
                        bundle.path)
    rows: list[dict[str, Any]] = []
    for chunk in _batches(files, batch_size):
        batch, ids = input_batch(chunk, contract)
        probs = bundle.probabilities(batch)
        for sample_id, p in zip(ids, probs, strict=True):
            row: dict[str, Any] = {"id": sample_id, **{f"prob_{n}": float(v) for n, v in zip(names, p, strict=True)}}
            if multilabel:
                row["predicted_labels"] = ";".join(n for n, v in zip(names, p, strict=True) if v >= cut)
            else:
                row["predicted_class"] = names[int(np.argmax(p))]
            if decision.get("positive_index") and not multilabel:
                score = float(p[decision["positive_index"]].sum())
                row.update(score=score, threshold=float(cut), decision="positive" if score >= cut else "negative")
            rows.append(row)
    report = json.dumps({
        "bundle": str(bundle.path), "task": meta["task"], "class_names": names,
        "threshold": float(cut) if (decision or multilabel) else None,
        "threshold_source": source,
        "predictions": rows,
    }, indent=2)

    def write_csv(path: Path) -> None:
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)

    csv_path = write_atomic(out / PREDICTIONS_CSV, write_csv)
    json_path = write_atomic(out / PREDICTIONS_JSON, lambda path: path.write_text(report))
    return {"csv": csv_path, "json": json_path}


def segment_images(bundle: Bundle, files: list[Path], out: Path, batch_size: int) -> dict[str, Path]:
    """Per-file class masks as PNG (class index per pixel, at the network input size)."""
    from PIL import Image

    contract = bundle.contract
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for chunk in _batches(files, batch_size):
        batch, _ = input_batch(chunk, contract)
        for f, p in zip(chunk, bundle.probabilities(batch), strict=True):
            mask = Image.fromarray(p.argmax(axis=0).astype(np.uint8))
            written[str(f)] = write_atomic(out / f"{f.stem}{MASK_SUFFIX}", mask.save)
    return written


def segment_scene(bundle: Bundle, scene: Path, out: Path, batch_size: int,
                  write_probabilities: bool = False) -> Path:
    """Whole-scene prediction of an input of any size by the bundle reader's tiled prediction."""
    return _reader(bundle.contract).predict_scene(bundle, scene, out, batch_size, write_probabilities)


def predict(bundle_dir: str | Path, inputs: Sequence[str | Path], out: str | Path,
            threshold: float | None = None, batch_size: int = 16,
            write_probabilities: bool = False, score_threshold: float | None = None) -> dict[str, Any]:
    """Verify the bundle, read the inputs its way, and write the predictions under ``out``.

    ``threshold`` overrides a classifier's decision threshold, ``score_threshold`` a detector's
    operating score threshold (:mod:`core.predict_detection`); each is refused by the other
    kind of bundle.
    """
    bundle = load_bundle(bundle_dir)
    reader, out = _reader(bundle.contract), Path(out)
    detection = bundle.meta["task"] == "detection"
    if detection and threshold is not None:
        raise DataError(f"bundle '{bundle.path}' is a detector: give --score-threshold (the score a "
                        "detection must reach), not --threshold")
    if not detection and score_threshold is not None:
        raise DataError(f"bundle '{bundle.path}' is a {bundle.meta['task']} model: --score-threshold "
                        "is for detection bundles; use --threshold")
    files = expand_inputs(inputs, reader.extensions)
    if detection:
        if reader.tiled:
            return {"scenes": detect_scenes(bundle, files, out, score_threshold)}
        return detect_files(bundle, files, out, score_threshold,
                            lambda path: _read(reader, path, bundle.contract))
    if reader.tiled:
        return {"scenes": [segment_scene(bundle, f, out, batch_size, write_probabilities) for f in files]}
    if bundle.meta["task"] == "segmentation":
        return {"masks": segment_images(bundle, files, out, batch_size)}
    return classify(bundle, files, out, threshold, batch_size)


def main(argv: Sequence[str] | None = None, bundle: str | Path | None = None) -> None:
    """``convnext-domains predict --bundle DIR ...``, or a bundle's own ``predict.py`` when
    ``bundle`` is given (its folder; no ``--bundle`` option then)."""
    parser = argparse.ArgumentParser(
        prog="convnext-domains predict --bundle" if bundle is None else "python predict.py",
        description="Run an exported bundle with ONNX Runtime (no torch needed).")
    if bundle is None:
        parser.add_argument("--bundle", required=True, help="bundle directory from convnext-domains export")
    else:
        parser.set_defaults(bundle=str(bundle))
    parser.add_argument("inputs", nargs="+", help="image/DICOM/GeoTIFF files or folders")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--threshold", type=float, default=None,
                        help="decision threshold overriding the one in metadata.json")
    parser.add_argument("--score-threshold", type=float, default=None,
                        help="detection bundles: score a detection must reach, in [0, 1], "
                             "overriding the operating threshold in metadata.json")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--write-probabilities", action="store_true",
                        help="readers that predict whole scenes tile by tile (GeoTIFF): also "
                             "write per-class probabilities")
    args = parser.parse_args(argv)
    try:
        written = predict(args.bundle, args.inputs, args.out, args.threshold, args.batch_size,
                          args.write_probabilities, args.score_threshold)
    except DataError as err:
        parser.exit(2, f"error: {err}\n")
    for kind, value in written.items():
        # Scene detection returns the files of each scene by kind: list the paths.
        items = [v for item in value for v in (item.values() if isinstance(item, dict) else [item])] \
            if isinstance(value, list) else []
        shown = (f"{len(value)} file(s) in {args.out}" if isinstance(value, dict)
                 else ", ".join(map(str, items)) if isinstance(value, list) else str(value))
        print(f"{kind}: {shown}")
