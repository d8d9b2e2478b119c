"""The ConvNeXt fine-tuning recipe: AdamW param groups with layer-wise lr decay, warmup + cosine."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from timm.optim import param_groups_layer_decay
from torch import nn
from torch.optim import AdamW, Optimizer
from torch.optim.lr_scheduler import LambdaLR


def recipe_param_groups(
    backbone: nn.Module,
    lr: float,
    weight_decay: float,
    layer_decay: float,
    extra: Iterable[nn.Module] = (),
) -> list[dict]:
    """Parameter groups for AdamW.

    The backbone's groups come from timm (ConvNeXt's ``group_matcher``): stage ``i`` gets
    ``lr * layer_decay ** (depth - i)``, so early layers move less than the classifier.
    Norms, biases and other 1-D tensors get no weight decay. Modules in ``extra`` (task heads
    outside the timm model) train at the full ``lr``.
    """
    merged: dict[tuple[float, float], dict] = {}
    for group in param_groups_layer_decay(backbone, weight_decay=weight_decay, layer_decay=layer_decay):
        # Groups with the same lr and decay are merged (all of them when layer_decay == 1).
        key = (group.get("lr_scale", 1.0), group["weight_decay"])
        merged.setdefault(key, {"params": [], "weight_decay": key[1], "lr": lr * key[0]})
        merged[key]["params"] += list(group["params"])
    scales = sorted({scale for scale, _ in merged})
    groups = []
    for (scale, wd), group in merged.items():
        # Names make the LR monitor's columns readable: layer0 is the stem.
        group["name"] = f"layer{scales.index(scale)}" + ("" if wd else "_no_wd")
        groups.append(group)
    decay, no_decay = [], []
    for module in extra:
        for p in module.parameters():
            if p.requires_grad:
                (no_decay if p.ndim <= 1 else decay).append(p)
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay, "lr": lr, "name": "head"})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "lr": lr, "name": "head_no_wd"})
    return groups


def warmup_cosine(
    optimizer: Optimizer, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.01
) -> LambdaLR:
    """Linear warmup from ~0 to each group's lr, then cosine decay to ``min_lr_ratio`` of it."""
    warmup_steps = max(0, min(warmup_steps, total_steps - 1))

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return min_lr_ratio + (1.0 - min_lr_ratio) * cosine

    return LambdaLR(optimizer, factor)


def adamw_warmup_cosine(groups: list[dict], trainer: Any, lr: float, betas: Sequence[float],
                        warmup_epochs: float, min_lr_ratio: float) -> dict[str, Any]:
    """Lightning's optimizer config: AdamW over ``groups``, stepped per batch through
    :func:`warmup_cosine` over the trainer's whole run (``warmup_epochs`` may be fractional)."""
    optimizer = AdamW(groups, lr=lr, betas=tuple(betas))
    total = max(1, int(trainer.estimated_stepping_batches))
    epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else 1
    scheduler = warmup_cosine(optimizer, int(round(total * warmup_epochs / epochs)), total, min_lr_ratio)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
