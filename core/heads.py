"""Dense-prediction decoders on the ConvNeXt feature pyramid (UPerNet and a lighter FPN).

Both heads are sized only from the backbone's per-level ``channels`` and ``strides``, so they
fit any ConvNeXt variant, custom ``dims`` or ConvNeXt-V2 without hard-coded widths. They
return logits at the finest pyramid level (stride ``strides[0]``, 4 for ConvNeXt); the task
upsamples them to the input size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from timm.layers import LayerNorm2d
from torch import Tensor, nn
from torch.nn import functional as F

HeadName = Literal["upernet", "fpn"]


def group_count(channels: int, max_groups: int = 32, min_per_group: int = 4) -> int:
    """GroupNorm groups for ``channels``: at most ``max_groups``, at least ``min_per_group`` each.

    Several channels per group keep the statistics meaningful on 1x1 maps (the global PPM
    branch) where a one-channel group would normalise every value to the bias.
    """
    for groups in range(min(max_groups, channels // min_per_group), 0, -1):
        if channels % groups == 0:
            return groups
    return 1


class ConvNormAct(nn.Sequential):
    """Conv2d + GroupNorm + ReLU. GroupNorm, because segmentation batches are often 1-2 tiles."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
            nn.GroupNorm(group_count(out_channels), out_channels),
            nn.ReLU(inplace=True),
        )


def _resize(x: Tensor, size: Sequence[int]) -> Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def _check_pyramid(channels: Sequence[int], strides: Sequence[int]) -> None:
    if len(channels) != len(strides) or len(channels) < 2:
        raise ValueError(
            f"need one channel count per stride for at least 2 levels, got channels={list(channels)} "
            f"and strides={list(strides)}"
        )
    if any(b <= a for a, b in zip(strides, strides[1:], strict=False)):
        raise ValueError(f"pyramid strides must increase from fine to coarse, got {list(strides)}")


class _PyramidHead(nn.Module):
    """Shared parts: per-level input LayerNorm, lateral 1x1 convs and the classifier."""

    def __init__(
        self,
        channels: Sequence[int],
        strides: Sequence[int],
        num_classes: int,
        decoder_channels: int,
        dropout: float,
    ) -> None:
        super().__init__()
        _check_pyramid(channels, strides)
        self.in_channels = list(channels)
        self.strides = list(strides)
        self.num_classes = num_classes
        self.decoder_channels = decoder_channels
        # timm's ConvNeXt stages end without a norm; the ConvNeXt paper's UPerNet normalises
        # each tapped level so features of very different scales enter the decoder alike.
        self.input_norms = nn.ModuleList(LayerNorm2d(c) for c in channels)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(decoder_channels, num_classes, kernel_size=1)

    @property
    def output_stride(self) -> int:
        """Stride of the logits relative to the input (the finest pyramid level)."""
        return self.strides[0]

    def _normed(self, features: Sequence[Tensor]) -> list[Tensor]:
        if len(features) != len(self.in_channels):
            raise ValueError(f"expected {len(self.in_channels)} pyramid levels, got {len(features)}")
        return [norm(f) for norm, f in zip(self.input_norms, features, strict=True)]

    @staticmethod
    def _top_down(laterals: list[Tensor]) -> list[Tensor]:
        # Coarse-to-fine: every level receives the upsampled context of all coarser levels.
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + _resize(laterals[i], laterals[i - 1].shape[-2:])
        return laterals


class PPM(nn.Module):
    """Pyramid pooling module (PSPNet): global context at several grid sizes.

    Args:
        in_channels: channels of the input (the coarsest pyramid level).
        channels: channels of each pooled branch and of the output.
        pool_scales: output grid sizes of the adaptive average pools.
    """

    def __init__(self, in_channels: int, channels: int, pool_scales: Sequence[int] = (1, 2, 3, 6)) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvNormAct(in_channels, channels, 1))
            for s in pool_scales
        )
        self.bottleneck = ConvNormAct(in_channels + len(pool_scales) * channels, channels, 3)

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        pooled = [_resize(branch(x), size) for branch in self.branches]
        return self.bottleneck(torch.cat([x, *pooled], dim=1))


class UPerHead(_PyramidHead):
    """UPerNet decoder (Xiao et al. 2018) as used for ConvNeXt segmentation.

    PPM on the coarsest level, FPN lateral + top-down path on the others, 3x3 smoothing of
    each level, then all levels upsampled to the finest one, concatenated and fused.

    Args:
        channels: channels of each pyramid level, fine to coarse (``backbone.channels``).
        strides: stride of each level (``backbone.strides``).
        num_classes: number of output classes.
        decoder_channels: width of the decoder (512 in the paper; 128 is plenty for CPUs).
        pool_scales: PPM grid sizes.
        dropout: channel dropout before the classifier.
    """

    def __init__(
        self,
        channels: Sequence[int],
        strides: Sequence[int],
        num_classes: int,
        decoder_channels: int = 128,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
    ) -> None:
        super().__init__(channels, strides, num_classes, decoder_channels, dropout)
        self.ppm = PPM(channels[-1], decoder_channels, pool_scales)
        self.laterals = nn.ModuleList(ConvNormAct(c, decoder_channels, 1) for c in channels[:-1])
        self.smooth = nn.ModuleList(
            ConvNormAct(decoder_channels, decoder_channels, 3) for _ in channels[:-1]
        )
        self.fuse = ConvNormAct(len(channels) * decoder_channels, decoder_channels, 3)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        """Logits ``(B, num_classes, H / output_stride, W / output_stride)``."""
        feats = self._normed(features)
        laterals = [conv(f) for conv, f in zip(self.laterals, feats, strict=False)]
        laterals = self._top_down([*laterals, self.ppm(feats[-1])])
        outs = [conv(f) for conv, f in zip(self.smooth, laterals, strict=False)] + [laterals[-1]]
        size = outs[0].shape[-2:]
        fused = self.fuse(torch.cat([_resize(o, size) for o in outs], dim=1))
        return self.classifier(self.dropout(fused))


class FPNHead(_PyramidHead):
    """A lighter decoder: FPN top-down path, one 3x3 conv per level, summed at the finest level.

    Roughly the semantic branch of Panoptic FPN without its progressive upsampling; no PPM and
    no wide concatenation, so about a quarter of UPerNet's FLOPs and parameters at the same
    width (ConvNeXt-T pyramid, 512x512 input).

    Args:
        channels: channels of each pyramid level, fine to coarse (``backbone.channels``).
        strides: stride of each level (``backbone.strides``).
        num_classes: number of output classes.
        decoder_channels: width of the decoder.
        dropout: channel dropout before the classifier.
    """

    def __init__(
        self,
        channels: Sequence[int],
        strides: Sequence[int],
        num_classes: int,
        decoder_channels: int = 128,
        dropout: float = 0.1,
    ) -> None:
        super().__init__(channels, strides, num_classes, decoder_channels, dropout)
        self.laterals = nn.ModuleList(ConvNormAct(c, decoder_channels, 1) for c in channels)
        self.smooth = nn.ModuleList(ConvNormAct(decoder_channels, decoder_channels, 3) for _ in channels)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        """Logits ``(B, num_classes, H / output_stride, W / output_stride)``."""
        feats = self._normed(features)
        laterals = self._top_down([conv(f) for conv, f in zip(self.laterals, feats, strict=True)])
        size = laterals[0].shape[-2:]
        fused = sum(_resize(conv(f), size) for conv, f in zip(self.smooth, laterals, strict=True))
        return self.classifier(self.dropout(fused))


HEADS: dict[str, type[_PyramidHead]] = {"upernet": UPerHead, "fpn": FPNHead}


def build_head(
    name: HeadName,
    channels: Sequence[int],
    strides: Sequence[int],
    num_classes: int,
    decoder_channels: int = 128,
    dropout: float = 0.1,
) -> nn.Module:
    """The decoder called ``name`` for a pyramid with ``channels`` and ``strides``."""
    if name not in HEADS:
        raise ValueError(f"unknown segmentation head '{name}'; choose one of {sorted(HEADS)}")
    return HEADS[name](channels, strides, num_classes, decoder_channels=decoder_channels, dropout=dropout)
