"""``convnext-domains pretrain``: FCMAE self-supervised pretraining on a datamodule's images.

Any datamodule of the project works (image folders, DICOM windows, GeoTIFF tiles with any
number of bands): the task reads only ``batch["image"]`` of the **training** dataloader, so
labels are never used and validation/test images are never seen. It writes the encoder as a
``.safetensors`` file that ``model.init_args.pretrained: PATH`` of any task loads, and a PNG of
a few reconstructions.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule
from lightning.pytorch.callbacks import LearningRateMonitor
from torch import Tensor

from core.atomic import write_atomic
from core.backbone import backbone_from_hparams
from core.checkpointing import default_checkpoints
from core.distributed import rank_zero_dir
from core.errors import DataError
from core.fcmae import FCMAE, random_patch_mask
from core.recipe import adamw_warmup_cosine, recipe_param_groups

log = logging.getLogger(__name__)

WEIGHTS_FILE = "fcmae_encoder.safetensors"
RECONSTRUCTIONS_FILE = "fcmae_reconstructions.png"


class FCMAETask(LightningModule):
    """Masked-autoencoder pretraining of a ConvNeXt encoder (no labels).

    Args:
        backbone: timm ConvNeXt name of the encoder (``convnext_*`` or ``convnextv2_*``); the
            fine-tuning config that loads the weights must use the same one.
        depths: blocks per stage, overriding the named variant (same values when fine-tuning).
        dims: channels per stage (same values when fine-tuning).
        in_chans: input channels; linked from the datamodule by the CLI.
        num_classes: linked from the datamodule by the CLI; unused (no labels are read).
        class_names: linked from the datamodule by the CLI; unused.
        channel_names: linked from the datamodule; used to adapt RGB ``pretrained`` weights.
        pretrained: start from these weights (``false``, ``true`` for timm's, or a local file),
            e.g. to adapt ImageNet weights to the domain before fine-tuning.
        drop_path_rate: stochastic depth rate of the encoder during pretraining.
        mask_ratio: share of patches hidden from the encoder (FCMAE: 0.6).
        patch_size: masked patch side in pixels, a multiple of 32; ``image_size`` (or
            ``tile_size``) must be a multiple of it.
        decoder_dim: channels of the light decoder (discarded after pretraining).
        decoder_depth: ConvNeXt blocks in the decoder.
        norm_pix_loss: predict each patch normalised by its own mean and std.
        lr: peak AdamW learning rate (after warmup, then cosine decay).
        weight_decay: AdamW weight decay (not applied to norms, biases and the mask token).
        betas: AdamW betas (MAE/FCMAE use 0.9, 0.95).
        warmup_epochs: linear warmup length in epochs (fractions allowed).
        min_lr_ratio: the cosine ends at ``lr * min_lr_ratio``.
        weights_name: file name of the encoder weights, written into the run's log directory
            after every epoch (atomically), so a stopped run still leaves usable weights.
        reconstructions: number of training images shown in the reconstruction PNG (0: none).
    """

    monitor = "train/loss"
    monitor_mode = "min"
    # Read by the datamodule: label-free tasks also train on its ``unlabelled_paths``.
    uses_labels = False

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
        drop_path_rate: float = 0.0,
        mask_ratio: float = 0.6,
        patch_size: int = 32,
        decoder_dim: int = 128,
        decoder_depth: int = 1,
        norm_pix_loss: bool = True,
        lr: float = 1.5e-3,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_epochs: float = 1.0,
        min_lr_ratio: float = 0.01,
        weights_name: str = WEIGHTS_FILE,
        reconstructions: int = 4,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        encoder = backbone_from_hparams(self.hparams, num_classes=0)
        self.fcmae = FCMAE(encoder, in_chans, patch_size, mask_ratio, decoder_dim, decoder_depth,
                           norm_pix_loss)
        self._shown: Tensor | None = None

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        images = batch["image"]
        h, w = images.shape[-2:]
        if h % self.hparams.patch_size or w % self.hparams.patch_size:
            raise DataError(f"pretraining inputs are {h}x{w}, not a multiple of patch_size "
                            f"{self.hparams.patch_size}; set data.init_args.image_size (or tile_size) "
                            f"to a multiple of {self.hparams.patch_size}")
        if self._shown is None and self.hparams.reconstructions:
            self._shown = images[: self.hparams.reconstructions].detach().cpu().clone()
        loss, _, _ = self.fcmae(images)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"pretraining loss became {loss.item()} at step {self.global_step}: "
                                     f"training diverged. Lower model.init_args.lr (now {self.hparams.lr})")
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True,
                 batch_size=images.shape[0])
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        h = self.hparams
        groups = recipe_param_groups(self.fcmae.encoder.model, h.lr, h.weight_decay, 1.0,
                                     extra=[self.fcmae.proj, self.fcmae.decoder, self.fcmae.pred])
        groups.append({"params": [self.fcmae.mask_token], "weight_decay": 0.0, "lr": h.lr,
                       "name": "mask_token"})
        return adamw_warmup_cosine(groups, self.trainer, h.lr, h.betas, h.warmup_epochs, h.min_lr_ratio)

    def configure_callbacks(self) -> list[Callback]:
        callbacks: list[Callback] = []
        if self.trainer.checkpoint_callback is not None:
            callbacks += default_checkpoints(self.trainer, self.monitor, self.monitor_mode)
        if self.trainer.loggers:
            callbacks.append(LearningRateMonitor(logging_interval="step"))
        return callbacks

    # ---- outputs -----------------------------------------------------------------------------
    def output_dir(self) -> Path | None:
        """Where the weights go: the run's folder on rank 0, None on the other ranks (all call it)."""
        if self.trainer.loggers:
            return rank_zero_dir(self.trainer)
        return Path(self.trainer.default_root_dir) if self.trainer.is_global_zero else None

    def encoder_state_dict(self) -> dict[str, Tensor]:
        """The encoder in timm's key layout, as ``pretrained: PATH`` expects."""
        return {k: v.detach().cpu().contiguous() for k, v in self.fcmae.encoder.model.state_dict().items()}

    def save_encoder(self, path: Path) -> Path:
        from safetensors.torch import save_file

        state = self.encoder_state_dict()
        return write_atomic(path, lambda tmp: save_file(state, str(tmp), metadata={
            "format": "pt", "source": "convnext-domains FCMAE pretraining",
            "backbone": str(self.hparams.backbone), "in_chans": str(self.hparams.in_chans)}))

    def on_train_epoch_end(self) -> None:
        folder = self.output_dir()
        if folder is not None and not self.trainer.sanity_checking:
            self.save_encoder(folder / self.hparams.weights_name)

    def on_train_end(self) -> None:
        folder = self.output_dir()
        if folder is None:
            return
        path = folder / self.hparams.weights_name
        log.info("FCMAE encoder weights: %s (use model.init_args.pretrained: %s)", path, path)
        if self._shown is not None:
            self.write_reconstructions(folder / RECONSTRUCTIONS_FILE)

    @torch.no_grad()
    def write_reconstructions(self, path: Path) -> Path:
        """Rows: input, what the encoder saw, reconstruction (masked patches predicted)."""
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot as plt

        was_training = self.training
        self.eval()
        images = self._shown.to(self.device)
        generator = torch.Generator(device="cpu").manual_seed(0)  # the same mask every run
        mask = random_patch_mask(images.shape[0], self.fcmae.grid(images), self.fcmae.mask_ratio,
                                 generator).to(self.device)
        _, pred, _ = self.fcmae(images, mask)
        recon = self.fcmae.reconstruct(images, pred, mask)
        seen = images * self.fcmae.visible(mask, images)
        self.train(was_training)
        rows = [("input", images), ("encoder input", seen), ("reconstruction", recon)]
        n = images.shape[0]
        fig, axes = plt.subplots(3, n, figsize=(2.2 * n, 6.6), squeeze=False)
        for r, (title, batch) in enumerate(rows):
            for c in range(n):
                axes[r][c].imshow(_display(batch[c], images[c]), cmap="gray" if batch.shape[1] < 3 else None)
                axes[r][c].set_axis_off()
            axes[r][0].set_title(title, loc="left", fontsize=9)
        fig.tight_layout()
        write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=80))
        plt.close(fig)
        return path


def _display(image: Tensor, reference: Tensor) -> np.ndarray:
    """First channel (gray) or first three (RGB), scaled by the input image's own range."""
    channels = 3 if image.shape[0] >= 3 else 1
    x, ref = image[:channels].float().cpu(), reference[:channels].float().cpu()
    lo, hi = float(ref.min()), float(ref.max())
    x = ((x - lo) / max(hi - lo, 1e-6)).clamp(0, 1)
    return x[0].numpy() if channels == 1 else x.permute(1, 2, 0).numpy()
