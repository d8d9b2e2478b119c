"""Albumentations pipelines: augment for training, resize + normalise for evaluation."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Literal

import albumentations as A
import torch
from albumentations.pytorch import ToTensorV2

from core.preprocess import resize_image, resize_mask

AugmentLevel = Literal["none", "flips", "dihedral", "default", "strong"]


def _size(image_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(image_size, int):
        return image_size, image_size
    h, w = image_size
    return int(h), int(w)


def _normalize(mean: Sequence[float], std: Sequence[float]) -> A.Normalize:
    # Readers return float32 already scaled to [0, 1] (or physical units), hence max_pixel_value=1.
    return A.Normalize(mean=list(mean), std=list(std), max_pixel_value=1.0)


def train_transform(
    image_size: int | Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    augment: AugmentLevel = "default",
) -> A.Compose:
    """Training pipeline. ``augment``: none, flips, dihedral (flips + 90° rotations, for overhead
    imagery; no resampling), default (crop + flips + brightness/contrast) or strong.

    Geometric transforms work on any channel count (multispectral included); intensity changes
    are applied to all channels together so band ratios stay meaningful.
    """
    h, w = _size(image_size)
    ops: list = []
    if augment in ("default", "strong"):
        scale = (0.6, 1.0) if augment == "strong" else (0.8, 1.0)
        ops.append(A.RandomResizedCrop(size=(h, w), scale=scale, ratio=(0.8, 1.25)))
    else:
        ops.append(A.Resize(h, w))
    if augment != "none":
        ops += [A.HorizontalFlip(), A.VerticalFlip()]
    if augment == "dihedral":  # overhead imagery has no "up": all 8 flips/rotations are valid
        ops.append(A.RandomRotate90())
    if augment in ("default", "strong"):
        ops.append(A.RandomBrightnessContrast(0.1, 0.1, p=0.5))
    if augment == "strong":
        ops += [A.RandomRotate90(), A.Affine(rotate=(-15, 15), p=0.5), A.GaussNoise(p=0.2)]
    # Seeded from torch, which seed_everything seeds: augmentation is reproducible run to run.
    # (albumentations otherwise seeds itself from the OS.) Workers reseed in seed_worker_transform.
    return A.Compose([*ops, _normalize(mean, std), ToTensorV2()], seed=torch.initial_seed() % 2**32)


def seed_worker_transform(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: each worker's copy of the pipeline draws its own stream,
    from the worker seed torch derives from the (seeded) main process."""
    info = torch.utils.data.get_worker_info()
    transform = getattr(info.dataset, "transform", None) if info is not None else None
    if hasattr(transform, "set_random_seed"):
        transform.set_random_seed(torch.initial_seed() % 2**32)


def eval_transform(
    image_size: int | Sequence[int], mean: Sequence[float], std: Sequence[float]
) -> A.Compose:
    """Evaluation/prediction pipeline: resize and normalise only.

    The resize is :func:`core.preprocess.resize_image` (PIL), the one the torch-free bundle
    predictor uses, so exported models get identical inputs.
    """
    size = _size(image_size)
    resize = A.Lambda(image=partial(resize_image, size=size), mask=partial(resize_mask, size=size))
    return A.Compose([resize, _normalize(mean, std), ToTensorV2()])
