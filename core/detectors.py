"""torchvision's detectors (FCOS, RetinaNet, Faster/Mask R-CNN) on a ConvNeXt feature pyramid."""

from __future__ import annotations

from collections import OrderedDict
from typing import Literal

import torch
from torch import Tensor, nn
from torchvision.models.detection import FCOS, FasterRCNN, MaskRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.fcos import FCOSHead
from torchvision.models.detection.retinanet import RetinaNetClassificationHead, RetinaNetHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import FeaturePyramidNetwork, sigmoid_focal_loss
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from core.backbone import ConvNeXtBackbone

DETECTORS = ("fcos", "retinanet", "faster_rcnn", "mask_rcnn")
RCNN = ("faster_rcnn", "mask_rcnn")
# Detectors with a focal classification loss (the two-stage ones use cross-entropy).
FOCAL = ("fcos", "retinanet")
# torchvision's NMS IoU per detector, used when nms_thresh is None.
DEFAULT_NMS = {"fcos": 0.6, "retinanet": 0.5, "faster_rcnn": 0.5, "mask_rcnn": 0.5}
# torchvision's focal-loss settings, the values its heads hard-code.
DEFAULT_FOCAL = (0.25, 2.0)


def pyramid_strides(kind: str, stage_strides: list[int]) -> list[int]:
    """Strides of the pyramid levels a detector gets from ConvNeXt stages of ``stage_strides``:
    the R-CNNs all stages plus a max-pooled level, fcos/retinanet the stages from stride 8 plus
    P6 and P7 (5 levels each for the usual 4 stages)."""
    last = stage_strides[-1]
    if kind in RCNN:
        return list(stage_strides) + [2 * last]
    return [s for s in stage_strides if s >= 8] + [2 * last, 4 * last]


# ---- backbone: ConvNeXt stages + FPN ------------------------------------------------------
class ConvNeXtFPN(nn.Module):
    """The backbone torchvision's detectors take: ConvNeXt stages into a feature pyramid network.

    ``fcos``/``retinanet`` use the stages at strides 8, 16, 32 and add P6/P7 (strides 64, 128)
    from P5; ``faster_rcnn``/``mask_rcnn`` use all four stages (4..32) and a max-pooled level
    (64) for the RPN, as torchvision builds them on ResNets.

    Args:
        body: the ConvNeXt (any timm variant, depths/dims, in_chans or weights).
        out_channels: channels of every pyramid level (``.out_channels``, read by torchvision).
        extra: ``"p6p7"`` or ``"maxpool"``: the levels added above the last stage.
    """

    def __init__(self, body: ConvNeXtBackbone, out_channels: int,
                 extra: Literal["p6p7", "maxpool"]) -> None:
        super().__init__()
        self.body = body
        kind = "retinanet" if extra == "p6p7" else "faster_rcnn"
        self.strides = pyramid_strides(kind, body.strides)
        self.stages = [i for i, s in enumerate(body.strides) if s in self.strides]
        block = LastLevelP6P7(out_channels, out_channels) if extra == "p6p7" else LastLevelMaxPool()
        self.fpn = FeaturePyramidNetwork([body.channels[i] for i in self.stages], out_channels,
                                         extra_blocks=block)
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        levels = self.body.forward_pyramid(x)
        # Keys "0".."3" are what torchvision's RoI pooling reads by default.
        return self.fpn(OrderedDict((str(k), levels[i]) for k, i in enumerate(self.stages)))


class InputTransform(GeneralizedRCNNTransform):
    """torchvision's batching transform for inputs our datamodules already prepared.

    Normalisation is an identity (mean 0, std 1 per channel): the datamodule normalised. With
    ``min_size=None`` images keep their size; otherwise torchvision's rule (shorter side to
    ``min_size``, a random choice of a list during training, longer side at most ``max_size``)
    applies and detections are mapped back to the input's pixels.
    """

    def __init__(self, in_chans: int, min_size: int | list[int] | None, max_size: int | None) -> None:
        self.keep_size = min_size is None
        sizes = (1,) if min_size is None else tuple([min_size] if isinstance(min_size, int) else min_size)
        super().__init__(sizes, max_size if max_size is not None else 10**9,
                         [0.0] * in_chans, [1.0] * in_chans)

    def resize(self, image: Tensor, target: dict[str, Tensor] | None = None
               ) -> tuple[Tensor, dict[str, Tensor] | None]:
        if self.keep_size:
            return image, target
        return super().resize(image, target)


# ---- focal-loss settings (torchvision's heads hard-code alpha 0.25, gamma 2) ---------------
class FocalFCOSHead(FCOSHead):
    """FCOS head whose classification term uses the given focal-loss ``alpha`` and ``gamma``."""

    def __init__(self, in_channels: int, num_anchors: int, num_classes: int,
                 alpha: float, gamma: float) -> None:
        super().__init__(in_channels, num_anchors, num_classes)
        self.alpha, self.gamma = alpha, gamma

    def compute_loss(self, targets: list[dict[str, Tensor]], head_outputs: dict[str, Tensor],
                     anchors: list[Tensor], matched_idxs: list[Tensor]) -> dict[str, Tensor]:
        # Regression and centerness terms stay torchvision's; only the class term is replaced.
        losses = super().compute_loss(targets, head_outputs, anchors, matched_idxs)
        logits = head_outputs["cls_logits"]
        onehot = torch.zeros_like(logits)
        for i, (target, matched) in enumerate(zip(targets, matched_idxs, strict=True)):
            fg = matched >= 0
            onehot[i, fg, target["labels"][matched[fg]]] = 1.0
        num_fg = max(1, sum(int((m >= 0).sum()) for m in matched_idxs))
        losses["classification"] = sigmoid_focal_loss(
            logits, onehot, alpha=self.alpha, gamma=self.gamma, reduction="sum") / num_fg
        return losses


class FocalRetinaNetClassificationHead(RetinaNetClassificationHead):
    """RetinaNet classification head with the given focal-loss ``alpha`` and ``gamma``."""

    def __init__(self, in_channels: int, num_anchors: int, num_classes: int,
                 alpha: float, gamma: float) -> None:
        super().__init__(in_channels, num_anchors, num_classes)
        self.alpha, self.gamma = alpha, gamma

    def compute_loss(self, targets: list[dict[str, Tensor]], head_outputs: dict[str, Tensor],
                     matched_idxs: list[Tensor]) -> Tensor:
        # torchvision's rule: per image, anchors between the IoU thresholds are ignored and the
        # sum is divided by the image's foreground count; then the mean over images.
        losses = []
        for target, logits, matched in zip(targets, head_outputs["cls_logits"], matched_idxs,
                                           strict=True):
            fg = matched >= 0
            onehot = torch.zeros_like(logits)
            onehot[fg, target["labels"][matched[fg]]] = 1.0
            valid = matched != self.BETWEEN_THRESHOLDS
            loss = sigmoid_focal_loss(logits[valid], onehot[valid], alpha=self.alpha,
                                      gamma=self.gamma, reduction="sum")
            losses.append(loss / max(1, int(fg.sum())))
        return torch.stack(losses).sum() / len(targets)


# ---- the torchvision model ------------------------------------------------------------------
def build_detector(kind: str, body: ConvNeXtBackbone, num_classes: int, in_chans: int,
                   fpn_channels: int, sizes: list[list[float]] | None, ratios: list[float],
                   score_thresh: float, nms_thresh: float, detections_per_img: int,
                   min_size: int | list[int] | None, max_size: int | None,
                   focal: tuple[float, float] | None) -> nn.Module:
    """One of torchvision's detectors on :class:`ConvNeXtFPN`.

    ``num_classes`` counts object classes; the two-stage detectors get one more (their
    background class 0), so their labels are the object class + 1.
    """
    if kind in RCNN:
        backbone = ConvNeXtFPN(body, fpn_channels, "maxpool")
        generator = anchor_generator(sizes, ratios)
        cls = MaskRCNN if kind == "mask_rcnn" else FasterRCNN
        model = cls(backbone, num_classes=num_classes + 1, rpn_anchor_generator=generator,
                    box_score_thresh=score_thresh, box_nms_thresh=nms_thresh,
                    box_detections_per_img=detections_per_img)
    else:
        backbone = ConvNeXtFPN(body, fpn_channels, "p6p7")
        if kind == "fcos":
            # Anchor-free: one "anchor" per location of the stride's size sets FCOS's scale
            # ranges per level (objects of 4-8 strides), as torchvision's FCOS does.
            generator = AnchorGenerator(tuple((float(s),) for s in backbone.strides),
                                        ((1.0,),) * len(backbone.strides))
            head = (FocalFCOSHead(fpn_channels, 1, num_classes, *focal) if focal
                    else FCOSHead(fpn_channels, 1, num_classes))
            model = FCOS(backbone, num_classes, anchor_generator=generator, head=head,
                         score_thresh=score_thresh, nms_thresh=nms_thresh,
                         detections_per_img=detections_per_img)
        else:
            generator = anchor_generator(sizes, ratios)
            count = generator.num_anchors_per_location()[0]
            head = RetinaNetHead(fpn_channels, count, num_classes)
            if focal:
                head.classification_head = FocalRetinaNetClassificationHead(
                    fpn_channels, count, num_classes, *focal)
            model = RetinaNet(backbone, num_classes, anchor_generator=generator, head=head,
                              score_thresh=score_thresh, nms_thresh=nms_thresh,
                              detections_per_img=detections_per_img)
    model.transform = InputTransform(in_chans, min_size, max_size)
    return model


def anchor_generator(sizes: list[list[float]], ratios: list[float]) -> AnchorGenerator:
    """torchvision's generator: ``sizes[level]`` at every ``ratio`` on each level."""
    return AnchorGenerator(_tuples(sizes), (tuple(float(r) for r in ratios),) * len(sizes))


def _tuples(sizes: list[list[float]]) -> tuple[tuple[float, ...], ...]:
    return tuple(tuple(float(s) for s in level) for level in sizes)
