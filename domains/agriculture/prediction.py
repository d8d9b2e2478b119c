"""Lightning ``predict`` on a whole scene: tiles from the datamodule, blended into a GeoTIFF."""

from __future__ import annotations

import logging
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from rasterio.windows import Window

from domains.agriculture.scene import SceneWriter

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
