"""Agriculture tasks: scene segmentation whose ``predict`` writes a georeferenced GeoTIFF."""

from __future__ import annotations

from core.segmentation import SegmentationTask
from domains.agriculture.prediction import ScenePredictionWriter


class SceneSegmentationTask(SegmentationTask):
    """The core segmentation task; ``predict`` blends overlapping tiles into a GeoTIFF class
    map (and optional probabilities) with the input scene's CRS, transform and nodata area."""

    def prediction_writer(self) -> ScenePredictionWriter:
        return ScenePredictionWriter()
