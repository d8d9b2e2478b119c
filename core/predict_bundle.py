"""``convnext-domains predict --bundle DIR INPUT... --out OUT``: run a bundle without torch.

Imports only numpy, PIL, onnxruntime and, for their domains, pydicom or rasterio. The inputs
are read and preprocessed by the same functions the training pipeline evaluates with.
:data:`READERS` declares, per reader kind, the project modules and packages this needs: export
copies those modules into each bundle (``predictor/``) and writes its ``requirements.txt``, so
``python BUNDLE/predict.py`` runs the same code without a project checkout.
Every output file is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.atomic import write_atomic
from core.bundle import Bundle, load_bundle
from core.errors import DataError
from core.preprocess import (
    IMAGE_EXTENSIONS,
    expand_inputs,
    normalize,
    read_image_file,
    to_network_input,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReaderSupport:
    """What the torch-free predictor needs for one reader kind (the ``reader`` of a contract)."""

    extensions: tuple[str, ...]
    """Input file extensions searched in folders (``""``: files without one)."""
    modules: tuple[str, ...] = ()
    """Project modules this module imports lazily for the reader; their own imports of
    project modules are followed when a bundle's predictor is assembled."""
    packages: tuple[str, ...] = ()
    """Distributions needed beyond :data:`BASE_PACKAGES`; version floors come from the
    project's declared requirements."""


# Always needed: this module and its module-level imports, and these distributions.
PREDICTOR_MODULES = ("core.predict_bundle",)
BASE_PACKAGES = ("onnxruntime", "numpy", "pillow")
_DICOM_DECODERS = ("python-gdcm", "pylibjpeg", "pylibjpeg-openjpeg", "pylibjpeg-rle")
READERS: dict[str, ReaderSupport] = {
    "image": ReaderSupport(IMAGE_EXTENSIONS),
    "dicom": ReaderSupport((".dcm", ".dicom", ".ima", ""), ("domains.medical.dicom",),
                           ("pydicom", *_DICOM_DECODERS)),
    "geotiff_patch": ReaderSupport((".tif", ".tiff"), ("domains.agriculture.bands",), ("rasterio",)),
    "geotiff_scene": ReaderSupport((".tif", ".tiff"),
                                   ("domains.agriculture.bands", "domains.agriculture.scene"),
                                   ("rasterio",)),
}
EXTENSIONS = {kind: support.extensions for kind, support in READERS.items()}


def reader_support(reader: str) -> ReaderSupport:
    """The :class:`ReaderSupport` of a bundle's reader kind, or a clear error."""
    if reader not in READERS:
        raise DataError(f"bundle input reader '{reader}' is not supported by this version "
                        f"(it knows {', '.join(READERS)}); upgrade convnext-domains")
    return READERS[reader]


def _band_spec(contract: dict[str, Any]):
    """The training's band handling: the same selection, names, roles, nodata and indices."""
    from domains.agriculture.bands import BandSpec

    # Select bands the way training did (``band_selection``: the `bands` option, None = all),
    # so a file with other bands is refused as on the Lightning path; bundles from before
    # that key select the resolved names. Roles are the resolved ones: never guessed again.
    selection = contract["band_selection"] if "band_selection" in contract else contract.get("bands")
    return BandSpec(selection, contract.get("band_names"), contract.get("band_roles") or None,
                    contract.get("nodata"), list(contract.get("indices") or []))


def _open_bands(spec, path: Path, contract: dict[str, Any]):
    """Open a GeoTIFF with the bundle's band spec; refuse other bands than training's."""
    from domains.agriculture.bands import check_same_bands

    stack = spec.open(str(path))
    try:
        check_same_bands(stack, contract["bands"], contract.get("file_band_count"), str(path))
    except DataError:
        stack.close()
        raise
    return stack


def read_input(path: Path, contract: dict[str, Any]) -> tuple[np.ndarray, str]:
    """One input as HWC float32 with the bundle's reader, and its id for the outputs."""
    reader = contract["reader"]
    if reader == "image":
        return read_image_file(path, contract.get("channels") or ("gray" if contract["in_chans"] == 1 else "rgb")), str(path)
    if reader == "dicom":
        from domains.medical.dicom import read_dicom

        frames = contract.get("frames", "middle")
        image = read_dicom(path, window=contract.get("window"), frame=frames if frames != "all" else "middle",
                           target_spacing=contract.get("target_spacing"))
        return image.image, str(path)
    if reader == "geotiff_patch":
        from rasterio.windows import Window

        from domains.agriculture.drift import InputDrift

        spec = _band_spec(contract)
        stack = _open_bands(spec, path, contract)
        try:
            image, valid = spec.read(stack, Window(0, 0, stack.width, stack.height))
        finally:
            stack.close()
        drift = InputDrift(contract.get("channel_names") or [f"channel {i}" for i in range(image.shape[2])])
        drift.add(normalize(image, contract["mean"], contract["std"]).transpose(2, 0, 1), valid)
        drift.report(str(path))  # a warning in the log for inputs far outside training's statistics
        return image, str(path)
    raise DataError(f"bundle input reader '{reader}' is not supported by this version")


def input_batch(files: list[Path], contract: dict[str, Any]) -> tuple[np.ndarray, list[str]]:
    """Read and preprocess files into one NCHW batch, with their ids."""
    images, ids = zip(*(read_input(f, contract) for f in files), strict=True)
    batch = np.stack([to_network_input(im, contract.get("image_size"), contract["mean"], contract["std"])
                      for im in images])
    return batch, list(ids)


def _batches(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def classify(bundle: Bundle, files: list[Path], out: Path, threshold: float | None,
             batch_size: int) -> dict[str, Path]:
    """Class probabilities and decisions for each file -> predictions.csv and .json."""
    meta, contract = bundle.meta, bundle.meta["input"]
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

    csv_path = write_atomic(out / "predictions.csv", write_csv)
    json_path = write_atomic(out / "predictions.json", lambda path: path.write_text(report))
    return {"csv": csv_path, "json": json_path}


def segment_images(bundle: Bundle, files: list[Path], out: Path, batch_size: int) -> dict[str, Path]:
    """Per-file class masks as PNG (class index per pixel, at the network input size)."""
    from PIL import Image

    contract = bundle.meta["input"]
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for chunk in _batches(files, batch_size):
        batch, _ = input_batch(chunk, contract)
        for f, p in zip(chunk, bundle.probabilities(batch), strict=True):
            mask = Image.fromarray(p.argmax(axis=0).astype(np.uint8))
            written[str(f)] = write_atomic(out / f"{f.stem}_mask.png", mask.save)
    return written


def segment_scene(bundle: Bundle, scene: Path, out: Path, batch_size: int,
                  write_probabilities: bool = False) -> Path:
    """Whole-scene prediction of a GeoTIFF of any size, written strip by strip."""
    from domains.agriculture.scene import SceneWriter, grid_windows

    contract = bundle.meta["input"]
    spec = _band_spec(contract)
    stack = _open_bands(spec, scene, contract)
    tile, overlap = int(contract["tile_size"]), int(contract.get("predict_overlap", 0))
    target = out / f"{scene.stem}_classes.tif"
    probs_path = target.with_name(target.stem + "_probabilities.tif") if write_probabilities else None
    try:
        # The writer renames its outputs only when the block ends without an error.
        with SceneWriter(target, {"width": stack.width, "height": stack.height, "crs": stack.crs,
                                  "transform": stack.transform},
                         bundle.meta["class_names"], tile, overlap, probs_path,
                         contract.get("channel_names")) as writer:
            for windows in _batches(grid_windows(stack.width, stack.height, tile, overlap), batch_size):
                reads = [spec.read(stack, w) for w in windows]
                batch = np.stack([normalize(img, contract["mean"], contract["std"]).transpose(2, 0, 1)
                                  for img, _ in reads])
                for w, (_, valid), x, p in zip(windows, reads, batch, bundle.probabilities(batch), strict=True):
                    writer.add(w, p, valid, x)
    finally:
        stack.close()
    return target


def predict(bundle_dir: str | Path, inputs: Sequence[str | Path], out: str | Path,
            threshold: float | None = None, batch_size: int = 16,
            write_probabilities: bool = False) -> dict[str, Any]:
    """Verify the bundle, read the inputs its way, and write the predictions under ``out``."""
    bundle = load_bundle(bundle_dir)
    reader, out = bundle.meta["input"]["reader"], Path(out)
    files = expand_inputs(inputs, reader_support(reader).extensions)
    if reader == "geotiff_scene":
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
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--write-probabilities", action="store_true",
                        help="GeoTIFF scenes: also write per-class probabilities")
    args = parser.parse_args(argv)
    try:
        written = predict(args.bundle, args.inputs, args.out, args.threshold, args.batch_size,
                          args.write_probabilities)
    except DataError as err:
        parser.exit(2, f"error: {err}\n")
    for kind, value in written.items():
        shown = (f"{len(value)} file(s) in {args.out}" if isinstance(value, dict)
                 else ", ".join(map(str, value)) if isinstance(value, list) else str(value))
        print(f"{kind}: {shown}")
