"""EMA of the trained weights that leaves buffers (operating point, class weights) alone."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import EMAWeightAveraging
from lightning.pytorch.trainer.states import TrainerFn


class ParameterEMA(EMAWeightAveraging):
    """Lightning's EMA weight averaging restricted to parameters.

    Lightning averages and swaps buffers too, pairing them by position. Our buffers are not
    weights: the operating-point ``threshold`` is chosen on validation and must be stored
    exactly, and ``balanced`` class weights appear only in ``setup`` (after the averaged copy
    was made), which shifted the pairing and crashed. So only parameters are averaged and
    swapped, and a checkpoint holds the averaged parameters with the model's own buffers.
    Outside ``fit`` the checkpoint's weights (already averaged) are used as they are.
    """

    def __init__(self, decay: float = 0.999, **kwargs: Any) -> None:
        super().__init__(decay=decay, use_buffers=False, **kwargs)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            # An average left from an earlier fit must not replace the weights under evaluation.
            self._average_model = None
        super().setup(trainer, pl_module, stage)

    def _swap_models(self, pl_module: LightningModule) -> None:
        assert self._average_model is not None
        pairs = zip(self._average_model.module.parameters(), pl_module.parameters(), strict=True)
        for average, current in pairs:
            held = average.data.clone()
            average.data.copy_(current.data)
            current.data.copy_(held)

    def _copy_average_to_current(self, pl_module: LightningModule) -> None:
        assert self._average_model is not None
        pairs = zip(self._average_model.module.parameters(), pl_module.parameters(), strict=True)
        for average, current in pairs:
            current.data.copy_(average.data)

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        current = checkpoint.get("current_model_state")
        if current is not None:
            parameters = {name for name, _ in pl_module.named_parameters()}
            # Buffers as the model holds them now: the threshold of this epoch's validation.
            checkpoint["state_dict"].update({k: v for k, v in current.items() if k not in parameters})

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
