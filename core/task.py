"""The shared Lightning task: ConvNeXt backbone, the fine-tuning recipe and one step for all splits."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule
from lightning.pytorch.callbacks import LearningRateMonitor
from torch import Tensor, nn
from torchmetrics import MeanMetric, MetricCollection

from core.backbone import ConvNeXtBackbone, backbone_from_hparams
from core.bundle import SCHEMA_VERSION
from core.checkpointing import default_checkpoints
from core.contracts import CHECKPOINT_SCHEMA_KEY
from core.ema import ParameterEMA
from core.readers import contract_json
from core.recipe import adamw_warmup_cosine, recipe_param_groups
from core.weights import parse_pretrained

# Our epoch metrics are torchmetrics results, already synced over DDP ranks when they are
# logged (and train/loss is rank 0's on purpose): Lightning's advice to add sync_dist would
# only average identical values, once per metric and epoch in every run's output.
warnings.filterwarnings("ignore", message=r"It is recommended to use `self.log\('(train|val|test)/")

STAGES = ("train", "val", "test")


def channels_last_on(device: torch.device) -> bool:
    """Whether to train and evaluate in channels_last (NHWC) on ``device``: on CUDA, where
    cuDNN's NHWC kernels serve ConvNeXt's depthwise 7x7 and the tensor cores under bf16; not on
    CPU, where benchmarks/flops.py measured no gain (42.5 vs 42.2 GFLOP/s)."""
    return device.type == "cuda"


class ConvNeXtTask(LightningModule):
    """Base task. Subclasses override the small hooks, never the steps.

    Hooks: :meth:`configure_models` (backbone + head), :meth:`configure_losses`,
    :meth:`build_metrics` (one collection, cloned per split), :meth:`compute_loss`,
    :meth:`update_metrics`. Class attributes pick the target key and the monitored metric.

    Args:
        backbone: timm ConvNeXt name.
        depths: custom blocks per stage (overrides the variant).
        dims: custom channels per stage.
        in_chans: input channels (linked from the datamodule by the CLI).
        num_classes: number of outputs (linked from the datamodule by the CLI).
        class_names: output names (linked from the datamodule by the CLI).
        channel_names: input channel names, e.g. bands (linked from the datamodule); channels
            named red/green/blue (or r/g/b) get the matching pretrained stem filters, other
            named channels the mean filter.
        pretrained: ``false``; ``true`` (timm's weights for ``backbone`` from the Hugging Face
            hub cache, else a download that gives up after ``CONVNEXT_DOMAINS_HUB_TIMEOUT``
            seconds); or a local ``.safetensors``/``.pth``/``.pt``/``.bin`` file. The stem is
            adapted to ``in_chans``; a classifier of another shape is not loaded.
        drop_path_rate: stochastic depth.
        lr: peak learning rate of the head; earlier layers get ``lr * layer_decay**depth``.
        weight_decay: AdamW weight decay (never applied to norms and biases).
        layer_decay: layer-wise lr decay; ``None`` means 0.8 with pretrained weights and 1.0
            (off) from scratch, where early layers hold nothing worth protecting.
        warmup_epochs: linear warmup length (fractions allowed), then cosine decay.
        min_lr_ratio: final lr as a fraction of the peak.
        betas: AdamW betas.
        ema_decay: keep an exponential moving average of the weights (e.g. 0.999) used for
            validation, testing and the final weights; ``None`` disables it.
        freeze_backbone_epochs: train only the head for the first N epochs.
    """

    target_key: str = "label"
    monitor: str = "val/loss"
    monitor_mode: str = "min"
    # Metrics of build_metrics() too costly to update on every training step.
    eval_only_metrics: tuple[str, ...] = ()

    def __init__(
        self,
        backbone: str = "convnext_atto",
        depths: Sequence[int] | None = None,
        dims: Sequence[int] | None = None,
        in_chans: int = 3,
        num_classes: int = 2,
        class_names: Sequence[str] | None = None,
        channel_names: Sequence[str] | None = None,
        pretrained: bool | str = False,
        drop_path_rate: float = 0.1,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        layer_decay: float | None = None,
        warmup_epochs: float = 1.0,
        min_lr_ratio: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.999),
        ema_decay: float | None = None,
        freeze_backbone_epochs: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class_names given for num_classes={num_classes}")
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        self.configure_models()
        self.configure_losses()
        self.configure_metrics()
        # The evaluation loss as a sample-weighted mean that torchmetrics syncs exactly across
        # DDP ranks with unequal shares (Lightning's sync_dist of a logged mean does not).
        self.eval_loss = nn.ModuleDict({s: MeanMetric() for s in ("val", "test")})

    # ---- hooks ---------------------------------------------------------------------------
    def configure_models(self) -> None:
        """Build ``self.backbone`` (a :class:`ConvNeXtBackbone`) and any head modules."""
        self.backbone = self.build_backbone(num_classes=self.hparams.num_classes)

    def build_backbone(self, num_classes: int) -> ConvNeXtBackbone:
        """The configured ConvNeXt; ``num_classes=0`` for tasks with their own head."""
        return backbone_from_hparams(self.hparams, num_classes)

    def head_modules(self) -> list[nn.Module]:
        """Modules outside the timm model (e.g. a segmentation decoder): full lr, never frozen."""
        return []

    def configure_losses(self) -> None:
        raise NotImplementedError

    def build_metrics(self) -> MetricCollection:
        raise NotImplementedError

    def configure_metrics(self) -> None:
        metrics = self.build_metrics()
        kept = {k: m for k, m in metrics.clone().items(keep_base=True) if k not in self.eval_only_metrics}
        # Keep the task's compute-group choice; a new collection would default to groups.
        self.train_metrics = MetricCollection(
            kept, prefix="train/", compute_groups=getattr(metrics, "_enable_compute_groups", True))
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")

    def prediction_writer(self) -> Callback | None:
        """Callback that writes ``predict`` results to the run's log directory."""
        return None

    def compute_loss(self, outputs: Tensor, target: Tensor) -> Tensor:
        return self.criterion(outputs, target)

    def update_metrics(self, stage: str, outputs: Tensor, target: Tensor) -> None:
        self._metrics(stage).update(outputs, target)

    def on_stage_epoch_end(self, stage: str, values: dict[str, float]) -> None:
        """Called after each val/test epoch with the logged values; add operating points, reports."""

    def evaluated_checkpoint(self) -> str | None:
        """The checkpoint file under evaluation, resolved (None: the weights in memory)."""
        path = self.trainer.ckpt_path if self._trainer is not None else None
        return str(Path(path).resolve()) if path else None

    @property
    def sanity_checking(self) -> bool:
        """Whether Lightning's pre-training sanity check (a few batches of the untrained model)
        is running: nothing may be chosen or reported from it, e.g. an operating point."""
        return self._trainer is not None and self.trainer.sanity_checking

    # ---- memory format ---------------------------------------------------------------------
    def configure_model(self) -> None:
        """Lightning's hook before the model moves to its device: weights go channels_last where
        :func:`channels_last_on` says so (the move keeps the layout). Inputs need no conversion:
        a convolution with channels_last weights gives channels_last outputs from either."""
        if self._trainer is not None and channels_last_on(self.trainer.strategy.root_device):
            self.to(memory_format=torch.channels_last)

    # ---- steps ---------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        return self.backbone(x)

    def _metrics(self, stage: str) -> MetricCollection:
        return getattr(self, f"{stage}_metrics")

    def _shared_step(self, batch: dict[str, Any], stage: str) -> Tensor:
        x, target = batch["image"], batch[self.target_key]
        outputs = self(x)
        loss = self.compute_loss(outputs, target)
        if not torch.isfinite(loss):
            raise FloatingPointError(self._non_finite_message(stage, loss))
        self.update_metrics(stage, outputs.detach(), target)
        if stage == "train":  # rank 0's, without a sync per step
            self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=x.shape[0])
        else:
            self.eval_loss[stage].update(loss.detach(), weight=x.shape[0])
            self.log(f"{stage}/loss", self.eval_loss[stage], on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def _non_finite_message(self, stage: str, loss: Tensor) -> str:
        where = f"{stage} loss became {loss.item()} at epoch {self.current_epoch}, step {self.global_step}"
        if stage == "train" or self.trainer.state.fn == "fit":  # validation inside fit: diverged
            return (f"{where}: training diverged. Lower model.init_args.lr (now {self.hparams.lr}), "
                    "check the input data for NaN/inf values, or give explicit data normalisation "
                    "mean/std.")
        return (f"{where}: the model's outputs are not finite. Check the input data for NaN/inf "
                "values and that the checkpoint comes from a run whose training did not diverge.")

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._shared_step(batch, "test")

    def _log_epoch(self, stage: str) -> dict[str, float]:
        metrics = self._metrics(stage)
        if next(iter(metrics.values())).update_count == 0:  # e.g. a val epoch with no batches
            return {}
        values = {k: v for k, v in metrics.compute().items() if v.numel() == 1}
        self.log_dict(values)
        metrics.reset()
        return {k: float(v) for k, v in values.items()}

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        self.on_stage_epoch_end("val", self._log_epoch("val"))

    def on_test_epoch_end(self) -> None:
        self.on_stage_epoch_end("test", self._log_epoch("test"))

    # ---- recipe --------------------------------------------------------------------------
    @property
    def effective_layer_decay(self) -> float:
        if self.hparams.layer_decay is not None:
            return float(self.hparams.layer_decay)
        return 0.8 if parse_pretrained(self.hparams.pretrained).used else 1.0

    def configure_optimizers(self) -> dict[str, Any]:
        h = self.hparams
        groups = recipe_param_groups(
            self.backbone.model, h.lr, h.weight_decay, self.effective_layer_decay,
            extra=self.head_modules(),
        )
        return adamw_warmup_cosine(groups, self.trainer, h.lr, h.betas, h.warmup_epochs, h.min_lr_ratio)

    def configure_callbacks(self) -> list[Callback]:
        callbacks: list[Callback] = []
        if self.trainer.checkpoint_callback is not None:  # respect enable_checkpointing=False
            callbacks += default_checkpoints(self.trainer, self.monitor, self.monitor_mode)
        writer = self.prediction_writer()
        if writer is not None:
            callbacks.append(writer)
        if self.trainer.loggers:
            callbacks.append(LearningRateMonitor(logging_interval="step"))
        if self.hparams.ema_decay:
            callbacks.append(ParameterEMA(decay=self.hparams.ema_decay))
        return callbacks

    def on_train_epoch_start(self) -> None:
        frozen = self.current_epoch < self.hparams.freeze_backbone_epochs
        head = {id(p) for p in self.backbone.head_parameters()}
        for p in self.backbone.parameters():
            if id(p) not in head:
                p.requires_grad_(not frozen)

    # ---- the input contract travels with the checkpoint ----------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # What an export needs to rebuild the task and describe its data, without the data.
        checkpoint["task_class"] = f"{type(self).__module__}.{type(self).__qualname__}"
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        if datamodule is not None and hasattr(datamodule, "input_contract"):
            # Checked here, when a bundle would refuse it, not at export time weeks later.
            checkpoint["preprocessing"] = contract_json(datamodule.input_contract(), SCHEMA_VERSION)
            checkpoint[CHECKPOINT_SCHEMA_KEY] = SCHEMA_VERSION
            checkpoint["data_fingerprint"] = datamodule.fingerprint()
