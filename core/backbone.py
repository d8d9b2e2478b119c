"""The ConvNeXt backbone: any timm ConvNeXt / ConvNeXt-V2, custom depths/dims, any channel count."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import timm
import torch
from torch import Tensor, nn

from core import weights

log = logging.getLogger(__name__)


@dataclass
class BackboneOutput:
    """Mirror of Hugging Face's ``BaseModelOutputWithPoolingAndNoAttention`` for ConvNeXt.

    ``hidden_states`` holds the output of each of the four stages (strides 4, 8, 16, 32);
    ``last_hidden_state`` is the last of them.
    """

    last_hidden_state: Tensor
    hidden_states: list[Tensor]


def _check_name(name: str) -> None:
    if not name.startswith(("convnext", "convnextv2")):
        raise ValueError(
            f"backbone '{name}' is not a ConvNeXt. Use a timm name such as convnext_atto, "
            "convnext_tiny, convnextv2_nano (list them with timm.list_models('convnext*'))."
        )
    if name not in timm.list_models("convnext*"):
        close = [m for m in timm.list_models("convnext*") if name.split(".")[0][:12] in m][:6]
        raise ValueError(f"unknown timm backbone '{name}'. Close names: {close or 'none'}.")


class ConvNeXtBackbone(nn.Module):
    """A timm ConvNeXt that exposes its feature pyramid and keeps timm's features/head split.

    Args:
        backbone: timm model name (``convnext_*`` or ``convnextv2_*``).
        depths: blocks per stage, overriding the named variant (like HF ``ConvNextConfig.depths``).
        dims: channels per stage (like HF ``ConvNextConfig.hidden_sizes``).
        in_chans: number of input channels; pretrained stem weights are adapted.
        num_classes: size of timm's classifier; 0 leaves the pooled features as output.
        drop_path_rate: stochastic depth rate.
        pretrained: ``False``, ``True`` (timm hub) or a path to a local weights file.
        rgb_index: optional per-input-channel RGB position used to adapt pretrained stems.
    """

    def __init__(
        self,
        backbone: str = "convnext_atto",
        depths: Sequence[int] | None = None,
        dims: Sequence[int] | None = None,
        in_chans: int = 3,
        num_classes: int = 0,
        drop_path_rate: float = 0.0,
        pretrained: bool | str = False,
        rgb_index: list[int | None] | None = None,
    ) -> None:
        super().__init__()
        _check_name(backbone)
        if in_chans < 1:
            raise ValueError(f"in_chans must be >= 1, got {in_chans}")
        arch: dict = {}
        if depths is not None:
            arch["depths"] = tuple(depths)
        if dims is not None:
            arch["dims"] = tuple(dims)
        if (depths is None) != (dims is None) or (depths is not None and len(arch["depths"]) != len(arch["dims"])):
            raise ValueError(
                f"depths {depths} and dims {dims} must be given together with one entry per stage"
            )
        kwargs = dict(in_chans=in_chans, num_classes=num_classes, drop_path_rate=drop_path_rate, **arch)
        self.model = self._create(backbone, pretrained, kwargs, rgb_index)
        self.name = backbone

    @staticmethod
    def _create(name: str, pretrained: bool | str, kwargs: dict, rgb_index) -> nn.Module:
        spec = weights.parse_pretrained(pretrained)
        model = timm.create_model(name, pretrained=False, **kwargs)
        if spec.used:
            from timm.models.convnext import checkpoint_filter_fn

            path = spec.path if spec.source == "file" else weights.hub_weights_file(name)
            skipped = weights.load_local_weights(model, path, checkpoint_filter_fn, rgb_index)
            log.info("loaded pretrained weights from %s (classifier not loaded: %s)",
                     path if spec.source == "file" else f"the hub cache ({path.name})",
                     skipped["head"] or "none")
        return model

    @property
    def feature_info(self) -> list[dict]:
        """timm's per-stage info: ``num_chs``, ``reduction`` and ``module`` for each stage."""
        return list(self.model.feature_info)

    @property
    def channels(self) -> list[int]:
        return [f["num_chs"] for f in self.feature_info]

    @property
    def strides(self) -> list[int]:
        return [f["reduction"] for f in self.feature_info]

    @property
    def num_features(self) -> int:
        return int(self.model.num_features)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.model.forward_features(x)

    def forward_head(self, features: Tensor, pre_logits: bool = False) -> Tensor:
        return self.model.forward_head(features, pre_logits=pre_logits)

    def forward_pyramid(self, x: Tensor) -> list[Tensor]:
        """Outputs of all four stages, at strides :attr:`strides` with :attr:`channels`."""
        # Not timm's forward_intermediates: older timm (1.0.12, our floor) also returns the stem.
        x = self.model.stem(x)
        levels = []
        for stage in self.model.stages:
            x = stage(x)
            levels.append(x)
        return levels

    def hidden_states(self, x: Tensor) -> BackboneOutput:
        states = self.forward_pyramid(x)
        return BackboneOutput(last_hidden_state=states[-1], hidden_states=states)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def head_parameters(self) -> list[nn.Parameter]:
        """Parameters of the classifier (trained even while the backbone is frozen)."""
        head = getattr(self.model, "head", None)
        return list(head.parameters()) if head is not None else []


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def output_shapes(backbone: ConvNeXtBackbone, size: int = 64) -> list[tuple[int, ...]]:
    """Shapes of each pyramid level for a ``size``x``size`` input (a quick sanity check)."""
    x = torch.zeros(1, backbone.model.stem[0].in_channels, size, size)
    return [tuple(t.shape) for t in backbone.forward_pyramid(x)]


def backbone_from_hparams(hparams: Any, num_classes: int = 0) -> ConvNeXtBackbone:
    """The ConvNeXt a task's hyperparameters describe (``backbone``, ``depths``, ``dims``,
    ``in_chans``, ``drop_path_rate``, ``pretrained``, ``channel_names``): the one place that
    turns the shared config keys of every task into an encoder."""
    return ConvNeXtBackbone(
        hparams.backbone, hparams.depths, hparams.dims, in_chans=hparams.in_chans,
        num_classes=num_classes, drop_path_rate=hparams.drop_path_rate,
        pretrained=hparams.pretrained, rgb_index=weights.rgb_index_from_names(hparams.channel_names),
    )

