"""What the agriculture domain contributes to core: its GeoTIFF readers for bundles (patches, and
whole scenes predicted tile by tile) and its model-card wording.

Imports neither torch nor rasterio: the bundle predictor carries this module, and core reads the
domain's extra from it when rasterio is missing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from core.plugins import DomainPlugin
from core.preprocess import normalize
from core.readers import InputReader, card_value
from domains.agriculture.contract import GeoTiffPatchContract, GeoTiffSceneContract

EXTRA = "agriculture"
SCENE_CLASSES = "{stem}_classes.tif"


class GeoTiffPatchReader(InputReader):
    """One GeoTIFF patch with training's bands, indices and nodata; warns on inputs far from
    the training statistics (other units, another sensor)."""

    name = "geotiff_patch"
    extensions = (".tif", ".tiff")
    extra = EXTRA
    packages = ("rasterio",)
    contract_class = GeoTiffPatchContract

    def read(self, path: Path, contract: GeoTiffPatchContract) -> np.ndarray:
        from rasterio.windows import Window

        from domains.agriculture.bands import BandSpec
        from domains.agriculture.drift import InputDrift

        spec = BandSpec.from_contract(contract)
        stack = spec.open_as_trained(str(path), contract)
        try:
            image, valid = spec.read(stack, Window(0, 0, stack.width, stack.height))
        finally:
            stack.close()
        drift = InputDrift(list(contract.channel_names) or [f"channel {i}" for i in range(image.shape[2])])
        drift.add(normalize(image, contract.mean, contract.std).transpose(2, 0, 1), valid)
        drift.report(str(path))  # a warning in the log for inputs far outside training's statistics
        return image

    def card_channels(self, contract: GeoTiffPatchContract) -> str:
        names = contract.channel_names or contract.bands
        return (f"- **Channels / bands** ({contract.in_chans}): {card_value(names)}"
                + (f"; spectral indices {card_value(contract.indices)}" if contract.indices else "") + ".")


class GeoTiffSceneReader(GeoTiffPatchReader):
    """A georeferenced scene of any size, cut into overlapping tiles of the training's
    ``tile_size`` and blended into a class map with the scene's CRS and transform."""

    name = "geotiff_scene"
    contract_class = GeoTiffSceneContract
    tiled = True
    scene_detection = True
    sample_unit = "spatial blocks of the training scene"

    def predict_scene(self, bundle: Any, path: Path, out: Path, batch_size: int,
                      write_probabilities: bool = False) -> Path:
        from domains.agriculture.bands import BandSpec
        from domains.agriculture.scene import SceneWriter, grid_windows

        contract: GeoTiffSceneContract = bundle.contract
        spec = BandSpec.from_contract(contract)
        stack = spec.open_as_trained(str(path), contract)
        tile, overlap = contract.tile_size, contract.predict_overlap
        target = out / SCENE_CLASSES.format(stem=path.stem)
        probs_path = target.with_name(target.stem + "_probabilities.tif") if write_probabilities else None
        windows = grid_windows(stack.width, stack.height, tile, overlap)
        try:
            # The writer renames its outputs only when the block ends without an error.
            with SceneWriter(target, {"width": stack.width, "height": stack.height, "crs": stack.crs,
                                      "transform": stack.transform},
                             bundle.meta["class_names"], tile, overlap, probs_path,
                             list(contract.channel_names) or None) as writer:
                for start in range(0, len(windows), batch_size):
                    chunk = windows[start : start + batch_size]
                    reads = [spec.read(stack, w) for w in chunk]
                    batch = np.stack([normalize(img, contract.mean, contract.std).transpose(2, 0, 1)
                                      for img, _ in reads])
                    for w, (_, valid), x, p in zip(chunk, reads, batch, bundle.probabilities(batch),
                                                   strict=True):
                        writer.add(w, p, valid, x)
        finally:
            stack.close()
        return target

    def detect_scene(self, bundle: Any, path: Path, out: Path,
                     detect: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]],
                     score_threshold: float) -> dict[str, Path]:
        """Detect objects over a whole scene: overlapping tiles (the contract's tile size and
        ``predict_overlap``) through ``detect`` (one normalised (C, H, W) float32 tile -> boxes
        xyxy in its pixels, scores, 0-based labels), merged across tile borders and written as
        GeoJSON (scene CRS and WGS84) and CSV (see :mod:`domains.agriculture.scene_detection`).
        Detections with ``score >= score_threshold`` are kept."""
        from domains.agriculture.bands import BandSpec
        from domains.agriculture.scene import grid_windows
        from domains.agriculture.scene_detection import SceneDetections, write_scene_detections

        contract: GeoTiffSceneContract = bundle.contract
        spec = BandSpec.from_contract(contract)
        stack = spec.open_as_trained(str(path), contract)
        tile = contract.tile_size
        try:
            # The training datamodule's merge settings, stored at export (older bundles: defaults).
            merge = (bundle.meta.get("detection") or {}).get("tile_merge") or {}
            scene = SceneDetections(stack.width, stack.height, tile, score_threshold, **merge)
            for window in grid_windows(stack.width, stack.height, tile, contract.predict_overlap):
                image, valid = spec.read(stack, window)
                x = np.ascontiguousarray(normalize(image, contract.mean, contract.std).transpose(2, 0, 1))
                boxes, scores, labels = detect(x)
                scene.add(window, boxes, scores, labels, valid)
            boxes, scores, labels = scene.merged()
            return write_scene_detections(out, path.stem, boxes, scores, labels, list(contract.class_names),
                                          stack.transform, stack.crs,
                                          {"score_threshold": float(score_threshold),
                                           "dropped": dict(scene.dropped)})
        finally:
            stack.close()

    def outputs(self, task: str) -> dict[str, str]:
        if task == "detection":
            from domains.agriculture.scene_detection import (
                SCENE_DETECTIONS,
                SCENE_DETECTIONS_CSV,
                SCENE_DETECTIONS_WGS84,
            )
            return {SCENE_DETECTIONS: "box polygons in the scene's CRS (`crs` member), with class, "
                                      "score and the pixel box",
                    SCENE_DETECTIONS_WGS84: "the same polygons in WGS84 lon/lat (RFC 7946)",
                    SCENE_DETECTIONS_CSV: "one row per detection: pixel box, class, score"}
        classes = SCENE_CLASSES.removesuffix(".tif")
        return {SCENE_CLASSES: "class index per pixel (255: no data), georeferenced like the scene",
                f"{classes}.json": "class names and the input's statistics against training's",
                f"{classes}_probabilities.tif": "per-class probabilities, with --write-probabilities"}

    def card_input(self, contract: GeoTiffSceneContract, size: str) -> list[str]:
        return [f"- **Size**: tiles of {size} pixels; whole scenes are cut into overlapping "
                f"tiles (overlap {card_value(contract.predict_overlap)}) and blended."]


GEOTIFF_PATCH = GeoTiffPatchReader()
GEOTIFF_SCENE = GeoTiffSceneReader()

PLUGIN = DomainPlugin(name="agriculture", extra=EXTRA, readers=(GEOTIFF_PATCH, GEOTIFF_SCENE),
                      tests=("test_agriculture.py", "test_agriculture_inputs.py",
                             "test_agriculture_configs.py", "test_agriculture_detection.py",
                             "test_agriculture_vector_labels.py"))
