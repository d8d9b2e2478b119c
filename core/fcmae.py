"""Fully convolutional masked autoencoding (FCMAE, ConvNeXt V2) in plain PyTorch.

The ConvNeXt V2 reference runs the encoder on sparse tensors (MinkowskiEngine). Here the
encoder runs densely and the mask is applied again after the stem and after every block, so
masked positions hold zeros throughout and visible features never mix with masked content
beyond what a block's receptive field sees in one step. A light decoder fills the masked
positions with a learned token and predicts the pixels of each patch; the loss is the mean
squared error on the (per-patch normalised) pixels of masked patches only.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from core.backbone import ConvNeXtBackbone


def random_patch_mask(batch: int, grid: tuple[int, int], ratio: float,
                      generator: torch.Generator | None = None, device=None) -> Tensor:
    """``(B, gh, gw)`` with 1 where a patch is masked; exactly ``round(ratio * gh * gw)`` per image."""
    gh, gw = grid
    count = gh * gw
    masked = int(round(ratio * count))
    noise = torch.rand(batch, count, generator=generator, device=device)
    order = noise.argsort(dim=1)
    mask = torch.zeros(batch, count, device=device)
    mask.scatter_(1, order[:, :masked], 1.0)
    return mask.view(batch, gh, gw)


def patchify(images: Tensor, patch: int) -> Tensor:
    """``(B, C, H, W)`` -> ``(B, gh*gw, patch*patch*C)``."""
    b, c, h, w = images.shape
    x = images.view(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // patch) * (w // patch), patch * patch * c)


def unpatchify(patches: Tensor, patch: int, channels: int, grid: tuple[int, int]) -> Tensor:
    """Inverse of :func:`patchify`."""
    b = patches.shape[0]
    gh, gw = grid
    x = patches.view(b, gh, gw, patch, patch, channels)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(b, channels, gh * patch, gw * patch)


class FCMAE(nn.Module):
    """ConvNeXt encoder + light decoder for masked image modelling.

    Args:
        encoder: the ConvNeXt to pretrain (its head is not used).
        in_chans: input channels (reconstructed channels).
        patch_size: side of a masked patch in pixels; a multiple of the encoder's total stride
            (32 for ConvNeXt), so each patch is one position of the last stage.
        mask_ratio: share of patches hidden from the encoder.
        decoder_dim: channels of the decoder.
        decoder_depth: ConvNeXt blocks in the decoder.
        norm_pix_loss: normalise each target patch by its own mean and std (as MAE/FCMAE).
    """

    def __init__(self, encoder: ConvNeXtBackbone, in_chans: int, patch_size: int = 32,
                 mask_ratio: float = 0.6, decoder_dim: int = 128, decoder_depth: int = 1,
                 norm_pix_loss: bool = True) -> None:
        super().__init__()
        stride = encoder.strides[-1]
        if patch_size % stride:
            raise ValueError(f"patch_size {patch_size} must be a multiple of the encoder's total "
                             f"stride {stride}")
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be between 0 and 1, got {mask_ratio}")
        from timm.models.convnext import ConvNeXtBlock

        self.encoder = encoder
        self.in_chans, self.patch_size, self.mask_ratio = in_chans, patch_size, mask_ratio
        self.norm_pix_loss = norm_pix_loss
        self.proj = nn.Conv2d(encoder.channels[-1], decoder_dim, kernel_size=1)
        self.mask_token = nn.Parameter(torch.zeros(1, decoder_dim, 1, 1))
        self.decoder = nn.Sequential(*[ConvNeXtBlock(decoder_dim) for _ in range(decoder_depth)])
        # Each position of the last stage predicts the stride x stride pixels it covers.
        self.stride = stride
        self.pred = nn.Conv2d(decoder_dim, stride * stride * in_chans, kernel_size=1)
        nn.init.normal_(self.mask_token, std=0.02)

    def grid(self, images: Tensor) -> tuple[int, int]:
        h, w = images.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"input {h}x{w} is not a multiple of patch_size {self.patch_size}")
        return h // self.patch_size, w // self.patch_size

    @staticmethod
    def visible(mask: Tensor, like: Tensor) -> Tensor:
        """``1 - mask`` at the resolution of ``like`` (nearest), shaped ``(B, 1, h, w)``."""
        return 1.0 - F.interpolate(mask.unsqueeze(1), size=like.shape[-2:], mode="nearest")

    def encode(self, images: Tensor, mask: Tensor) -> Tensor:
        """The last stage's features with masked positions zeroed after the stem and every block."""
        model = self.encoder.model
        x = model.stem(images * self.visible(mask, images))
        x = x * self.visible(mask, x)
        for stage in model.stages:
            x = stage.downsample(x)
            for block in stage.blocks:
                x = block(x)
                x = x * self.visible(mask, x)
        return x

    def forward(self, images: Tensor, mask: Tensor | None = None,
                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Loss, per-patch pixel predictions ``(B, gh*gw, p*p*C)`` and the mask ``(B, gh, gw)``."""
        grid = self.grid(images)
        if mask is None:
            mask = random_patch_mask(images.shape[0], grid, self.mask_ratio, generator, images.device)
        features = self.proj(self.encode(images, mask))
        seen = self.visible(mask, features)
        features = features * seen + self.mask_token * (1.0 - seen)
        pixels = F.pixel_shuffle(self.pred(self.decoder(features)), self.stride)  # (B, C, H, W)
        pred = patchify(pixels, self.patch_size)
        return self.loss(images, pred, mask), pred, mask

    def target(self, images: Tensor) -> Tensor:
        target = patchify(images, self.patch_size)
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6).sqrt()
        return target

    def loss(self, images: Tensor, pred: Tensor, mask: Tensor) -> Tensor:
        per_patch = ((pred - self.target(images)) ** 2).mean(dim=-1)
        weights = mask.flatten(1)
        return (per_patch * weights).sum() / weights.sum().clamp(min=1.0)

    @torch.no_grad()
    def reconstruct(self, images: Tensor, pred: Tensor, mask: Tensor) -> Tensor:
        """Images with masked patches replaced by the prediction (de-normalised per patch)."""
        patches = patchify(images, self.patch_size)
        if self.norm_pix_loss:
            mean = patches.mean(dim=-1, keepdim=True)
            std = (patches.var(dim=-1, keepdim=True) + 1e-6).sqrt()
            pred = pred * std + mean
        m = mask.flatten(1).unsqueeze(-1)
        mixed = patches * (1 - m) + pred * m
        return unpatchify(mixed, self.patch_size, self.in_chans, self.grid(images))
