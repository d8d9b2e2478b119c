"""Lightning ``predict`` on a whole scene: tiles from the datamodule, blended into a GeoTIFF class
map (segmentation) or merged into GeoJSON/CSV detections (detection)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from rasterio.windows import Window

from core.distributed import require_one_process
from domains.agriculture.scene import SceneWriter
from domains.agriculture.scene_detection import SceneDetections, write_scene_detections

log = logging.getLogger(__name__)


class ScenePredictionWriter(BasePredictionWriter):
    """Feeds each predicted tile batch to a :class:`SceneWriter` as it arrives.

    The outputs get their final names only when prediction ends; if it fails, the temporary
    files are removed (see :class:`SceneWriter`).
    """

    def __init__(self) -> None:
        super().__init__(write_interval="batch")
        self.writer: SceneWriter | None = None
        self.outputs: dict[str, Any] = {}

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        require_one_process(trainer, "a scene's class map")
        # The dataloader (and so the scene) exists once predict starts.
        spec = trainer.datamodule.scene_output(trainer.log_dir)
        self.outputs = {"classes": spec["path"], "probabilities": spec["probabilities_path"]}
        self.writer = SceneWriter(spec["path"], spec["profile"], pl_module.class_names,
                                  spec["tile"], spec["overlap"], spec["probabilities_path"],
                                  spec.get("channel_names"))

    def write_on_batch_end(self, trainer: Trainer, pl_module: LightningModule, prediction: Any,
                           batch_indices: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        probs = prediction["probs"].float().cpu().numpy()
        # The normalised inputs, to compare the scene with the training statistics.
        images = batch["image"].float().cpu().numpy()
        for i in range(probs.shape[0]):
            window = Window(*batch["window"][i].tolist())
            self.writer.add(window, probs[i], batch["valid"][i].cpu().numpy(), images[i])
        # Lightning keeps every step's return value for `return_predictions`; dropping the
        # probabilities once written keeps memory bounded by one strip, not the scene.
        prediction["probs"] = None

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.writer is not None:
            writer, self.writer = self.writer, None
            writer.close()
            self.outputs["metadata"] = writer.metadata_path
            log.info("scene prediction written to %s", self.outputs["classes"])

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        # A failed prediction must not leave a class map that looks finished.
        if self.writer is not None:
            writer, self.writer = self.writer, None
            writer.abort()


class SceneDetectionWriter(BasePredictionWriter):
    """Collects each predicted tile batch's detections in a
    :class:`~domains.agriculture.scene_detection.SceneDetections` and, when prediction ends,
    writes the merged scene detections as GeoJSON (scene CRS and WGS84) and CSV.

    The datamodule's ``scene_detection_output(log_dir)`` says where and with which merge
    settings; detections are kept at its ``score_threshold``, else at the task's operating
    threshold (chosen on validation).
    """

    def __init__(self) -> None:
        super().__init__(write_interval="batch")
        self.scene: SceneDetections | None = None
        self.spec: dict[str, Any] = {}
        self.outputs: dict[str, Any] = {}

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        require_one_process(trainer, "a scene's merged detections")
        self.spec = trainer.datamodule.scene_detection_output(trainer.log_dir)
        self.scene = None  # made at the first batch, when the task's threshold is known

    def write_on_batch_end(self, trainer: Trainer, pl_module: LightningModule, prediction: Any,
                           batch_indices: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.scene is None:
            spec = self.spec
            threshold = spec["score_threshold"] if spec["score_threshold"] is not None else prediction["threshold"]
            self.scene = SceneDetections(spec["width"], spec["height"], spec["tile"], float(threshold),
                                         spec["nms_iou"], spec["edge_margin"],
                                         int(batch["image"].shape[-1]))
        for i in range(len(prediction["boxes"])):
            self.scene.add(batch["window"][i].tolist(), prediction["boxes"][i].numpy(),
                           prediction["scores"][i].numpy(), prediction["labels"][i].numpy(),
                           batch["valid"][i].cpu().numpy())

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        spec = self.spec
        if self.scene is None:  # no tile at all: an empty scene output still says so
            self.scene = SceneDetections(spec["width"], spec["height"], spec["tile"])
        boxes, scores, labels = self.scene.merged()
        self.outputs = write_scene_detections(
            Path(spec["folder"]), spec["stem"], boxes, scores, labels, pl_module.class_names,
            spec["transform"], spec["crs"],
            {"score_threshold": self.scene.score_threshold, "dropped": dict(self.scene.dropped)})
        log.info("%d detections in the scene written to %s", len(boxes), self.outputs["geojson"])
        self.scene = None
