"""Object detection data: annotated images -> batches of images with boxes (and instance masks).

A batch is ``{"image": (B, C, H, W) float, normalised, "boxes": [(N_i, 4) float xyxy],
"labels": [(N_i,) int64], "id": [str], "orig_size": (B, 2) int64 stored (height, width)}``
plus ``"masks": [(N_i, H, W) uint8]`` with ``instance_masks``. Boxes are in pixels of the
network input (after resize and augmentation); labels index ``class_names`` (object classes
only, no background); images without objects have ``N_i = 0`` and stay in every split.

Evaluation resizes with :func:`core.preprocess.resize_image` (the torch-free predictor's
resize) and scales boxes by the same factors; nothing is dropped, so metrics see every
annotated object. Training augments image, boxes and masks together with albumentations
(``bbox_params``, pascal_voc format): boxes are clipped to the augmented image, and a box is
dropped (with its mask) when less than ``min_visibility`` of its area is left inside the image
or when a side is shorter than ``min_box_size`` pixels of the network input.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import albumentations as A
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from core.annotation_formats import CrowdPolicy
from core.annotations import (
    AnnotationFormat,
    AnnotationOptions,
    AnnotationSet,
    BadAnnotationPolicy,
    ImageAnnotations,
    OnBadAnnotation,
    read_annotations,
)
from core.data import ConvNeXtDataModule, DataError, SampleSource, warn_rare_classes
from core.filescan import describe_images, inspect_image, majority_channels
from core.preprocess import Channels, expand_inputs, image_hw, read_image_file, resize_mask
from core.transforms import AugmentLevel, eval_transform, train_transform

log = logging.getLogger(__name__)

NEGATIVE = "(no objects)"  # the stratum of images without objects


class DetectionSource(SampleSource):
    """Annotated image files: each sample is an image with its boxes, class indices and
    (optionally) instance masks, in pixels of the stored image.

    ``labels`` (the per-sample label of :class:`~core.data.SampleSource`) is 1 for images with
    objects and 0 for negatives; ``strata`` is the most frequent class of the image, or
    :data:`NEGATIVE`, so every split gets negatives and images of every class.

    Args:
        images: the checked images and their objects.
        class_names: object classes in index order.
        channels: ``gray`` or ``rgb``, what every image is converted to.
        instance_masks: read each image's instance masks into ``masks``.
    """

    def __init__(self, images: Sequence[ImageAnnotations], class_names: Sequence[str],
                 channels: Channels, instance_masks: bool = False) -> None:
        index = {c: i for i, c in enumerate(class_names)}
        self.images = list(images)
        self.paths = [a.path for a in self.images]
        self.channels = channels
        self.instance_masks = instance_masks
        self.box_labels = [np.array([index[n] for n in a.labels], np.int64) for a in self.images]
        splits = [a.split for a in self.images]
        strata = [str(class_names[Counter(lab.tolist()).most_common(1)[0][0]]) if len(lab) else NEGATIVE
                  for lab in self.box_labels]
        has_objects = np.array([len(a.boxes) > 0 for a in self.images], np.int64)
        super().__init__(self.paths, has_objects, class_names=class_names, strata=strata,
                         split=splits if all(s is not None for s in splits) else None)

    def read_image(self, index: int) -> np.ndarray:
        return read_image_file(self.paths[index], self.channels)

    def read(self, index: int) -> dict[str, Any]:
        """``image`` (HWC float32), ``boxes`` (N, 4), ``labels`` (N,), ``id``, ``orig_size``
        and, with instance masks, ``masks`` (N, H, W) uint8, all at the stored size."""
        item = self.images[index]
        sample = {"image": self.read_image(index), "boxes": item.boxes.copy(),
                  "labels": self.box_labels[index].copy(), "id": self.ids[index],
                  "orig_size": np.array([item.height, item.width], np.int64)}
        if self.instance_masks:
            sample["masks"] = item.render_masks()
        return sample

    def boxes_at(self, index: int, image_size: int | Sequence[int]) -> np.ndarray:
        """Sample ``index``'s boxes scaled to the network input of ``image_size``."""
        item = self.images[index]
        h, w = image_hw(image_size)
        return item.boxes * np.array([w / item.width, h / item.height] * 2, np.float32)


# ---- transforms ------------------------------------------------------------------------------
def _empty_masks(size: tuple[int, int]) -> torch.Tensor:
    return torch.zeros((0, *size), dtype=torch.uint8)


class EvalDetectionTransform:
    """Resize + normalise (the evaluation pipeline of classification), boxes scaled by the
    resize factors, instance masks resized nearest-neighbour; nothing is dropped."""

    def __init__(self, image_size: int | Sequence[int], mean: Sequence[float], std: Sequence[float]) -> None:
        self.size = image_hw(image_size)
        self.image = eval_transform(self.size, mean, std)

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        height, width = sample["image"].shape[:2]
        h, w = self.size
        sample["image"] = torch.nan_to_num(self.image(image=sample["image"])["image"], nan=0.0,
                                           posinf=0.0, neginf=0.0)
        scale = np.array([w / width, h / height] * 2, np.float32)
        sample["boxes"] = torch.as_tensor(np.asarray(sample["boxes"], np.float32).reshape(-1, 4) * scale)
        sample["labels"] = torch.as_tensor(sample["labels"], dtype=torch.int64)
        if "masks" in sample:
            masks = [resize_mask(m, self.size) for m in sample["masks"]]
            sample["masks"] = torch.as_tensor(np.stack(masks)) if masks else _empty_masks(self.size)
        return sample


class TrainDetectionTransform:
    """The classification training augmentation (``augment``: crop, flips, brightness/contrast
    ...; see :func:`core.transforms.train_transform`) applied to image, boxes and masks together.

    Boxes are clipped to the augmented image; a box is dropped, with its mask, when less than
    ``min_visibility`` of its area is left inside or when its width or height is under
    ``min_box_size`` pixels of the network input (albumentations' ``BboxParams`` filters, after
    each transform: the first one already outputs the network input size).
    """

    def __init__(self, image_size: int | Sequence[int], mean: Sequence[float], std: Sequence[float],
                 augment: AugmentLevel = "default", min_box_size: float = 2.0,
                 min_visibility: float = 0.3) -> None:
        self.size = image_hw(image_size)
        # One augmentation policy for every task: the classification pipeline's transforms.
        self.compose = compose_with_boxes(list(train_transform(self.size, mean, std, augment).transforms),
                                          box_rule(min_box_size, min_visibility))

    def set_random_seed(self, seed: int) -> None:
        """Reseed (dataloader workers; see :func:`core.transforms.seed_worker_transform`)."""
        self.compose.set_random_seed(seed)

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        boxes = np.asarray(sample["boxes"], np.float32).reshape(-1, 4)
        inputs: dict[str, Any] = {"image": sample["image"], "bboxes": boxes,
                                  "labels": np.asarray(sample["labels"], np.int64),
                                  "instance": np.arange(len(boxes))}
        masks = sample.get("masks")
        if masks is not None and len(masks):
            inputs["masks"] = np.asarray(masks)
        out = self.compose(**inputs)
        sample["image"] = torch.nan_to_num(out["image"], nan=0.0, posinf=0.0, neginf=0.0)
        sample["boxes"] = torch.as_tensor(np.asarray(out["bboxes"], np.float32).reshape(-1, 4))
        sample["labels"] = torch.as_tensor(np.asarray(out["labels"], np.int64).reshape(-1))
        if masks is not None:
            kept = torch.as_tensor(np.asarray(out["instance"], np.int64).reshape(-1))
            sample["masks"] = (torch.as_tensor(out["masks"]).to(torch.uint8)[kept] if "masks" in out
                               else _empty_masks(tuple(sample["image"].shape[-2:])))
        return sample


def box_rule(min_box_size: float = 2.0, min_visibility: float = 0.3) -> A.BboxParams:
    """The training rule for boxes (see :class:`TrainDetectionTransform`): pascal_voc xyxy
    pixels, clipped to the image, dropped under ``min_visibility`` of their area or under
    ``min_box_size`` pixels wide or high; ``labels`` and ``instance`` (the object's index, to
    keep its mask) travel with each box."""
    return A.BboxParams(format="pascal_voc", label_fields=["labels", "instance"], clip=True,
                        min_visibility=min_visibility, min_width=min_box_size, min_height=min_box_size)


def compose_with_boxes(transforms: list, bbox_params: A.BboxParams) -> A.Compose:
    """An albumentations pipeline over image, boxes and masks, seeded from torch like
    :func:`core.transforms.train_transform` (reproducible under ``seed_everything``)."""
    return A.Compose(transforms, bbox_params=bbox_params, seed=torch.initial_seed() % 2**32)


class DetectionDataset(Dataset):
    """Samples of a :class:`DetectionSource` through a detection transform."""

    def __init__(self, source: DetectionSource, indices: np.ndarray, transform) -> None:
        self.source, self.indices, self.transform = source, np.asarray(indices), transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.transform(self.source.read(int(self.indices[i])))


# ---- the datamodule --------------------------------------------------------------------------
class DetectionDataModule(ConvNeXtDataModule):
    """Object detection from annotations in COCO JSON, YOLO txt, Pascal VOC XML or masks.

    Every image is opened and every box checked at setup (see :mod:`core.annotations`); bad
    ones stop the run or are skipped and listed in ``skipped_files.csv``
    (``on_bad_annotation``). Splits are stratified by each image's most frequent class, with
    images without objects as their own stratum, so validation and test hold negatives and
    positives. Batches: see :mod:`core.detection_data`.

    Args:
        annotations: a COCO ``.json``; a YOLO data set folder or its ``data.yaml``; a VOC
            ``.xml`` or a folder of them; or a folder of masks (format ``masks``).
        format: ``coco``, ``yolo``, ``voc``, ``masks`` or ``auto`` (from the path: ``.json``
            COCO, ``.xml`` VOC, ``.yaml``/``classes.txt``/``labels/`` YOLO, images only masks).
        images: folder the annotations' image names are relative to (COCO ``file_name``, VOC
            ``filename``), or the image folder of ``masks`` (masks then match images by relative
            path and stem). Default: found beside the annotations (see :mod:`core.annotation_formats`).
        class_order: the object classes in class-index order; an object of another class is a
            bad annotation, with the closest name suggested. Default: the classes the file
            declares (COCO categories by id, YOLO names), else the sorted names found (VOC).
        channels: ``gray`` or ``rgb``; default: the layout most images are stored in (gray
            stays one channel; alpha is dropped and reported).
        on_bad_annotation: ``error`` stops at the first bad image naming its annotation file,
            row and the fix; ``skip`` leaves such images out and lists them in skipped_files.csv.
        box_tolerance: pixels a box may reach outside its image and be clipped; further is bad.
        min_box_size: training only: boxes with a side under this many pixels of the network
            input after augmentation are dropped.
        min_visibility: training only: boxes with less than this share of their area left
            inside the augmented image are dropped.
        instance_masks: add ``masks`` (instance masks) to batches, from COCO/YOLO polygons,
            RLE (compressed RLE needs pycocotools) or masks.
        keep_difficult: keep Pascal VOC objects marked ``<difficult>1``.
        crowd: COCO ``iscrowd: 1`` annotations: ``drop`` (as torchvision's references) or ``keep``.
        mask_values: masks format: the mask value of each class in ``class_order``; default
            binary masks (one class).
        mask_threshold: binary masks: foreground at or above this value; default half the
            mask's full scale (128 for 8-bit anti-aliased masks, 0.5 for 0/1 masks).
        min_mask_area: masks: connected components with fewer pixels are not objects.
        **kwargs: options of :class:`~core.data.ConvNeXtDataModule`.
    """

    # Per-sample arrays whose sizes differ between images: batched as lists.
    ragged_keys: tuple[str, ...] = ("boxes", "labels", "masks")

    def __init__(
        self,
        annotations: str | None = None,
        format: AnnotationFormat = "auto",  # noqa: A002  (the word every user expects)
        images: str | None = None,
        class_order: list[str] | None = None,
        channels: Channels | None = None,
        on_bad_annotation: OnBadAnnotation = "error",
        box_tolerance: float = 2.0,
        min_box_size: float = 2.0,
        min_visibility: float = 0.3,
        instance_masks: bool = False,
        keep_difficult: bool = True,
        crowd: CrowdPolicy = "drop",
        mask_values: list[int] | None = None,
        mask_threshold: float | None = None,
        min_mask_area: int = 4,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if on_bad_annotation not in ("error", "skip"):
            raise DataError(f"on_bad_annotation is '{on_bad_annotation}'; use error or skip")
        if not 0.0 <= min_visibility <= 1.0:
            raise DataError(f"min_visibility is {min_visibility}; give a share between 0 and 1")

    # -- hooks --
    def annotation_options(self) -> AnnotationOptions:
        """The reading and checking options, from this datamodule's arguments."""
        h = self.hparams
        return AnnotationOptions(
            images=h.images, class_order=h.class_order, box_tolerance=h.box_tolerance,
            instance_masks=h.instance_masks, keep_difficult=h.keep_difficult, crowd=h.crowd,
            mask_values=h.mask_values, mask_threshold=h.mask_threshold, min_mask_area=h.min_mask_area)

    def read_annotation_set(self, policy: BadAnnotationPolicy) -> AnnotationSet:
        """The checked images and class names; subclasses with their own layouts override this."""
        if not self.hparams.annotations:
            raise DataError(f"{type(self).__name__} needs data.init_args.annotations (a COCO JSON, a "
                            "YOLO folder or data.yaml, VOC XML files or a mask folder)")
        return read_annotations(self.hparams.annotations, self.hparams.format, self.annotation_options(),
                                policy)

    def build_source(self) -> DetectionSource:
        h = self.hparams
        found = self.read_annotation_set(BadAnnotationPolicy(h.on_bad_annotation, self.skipped))
        infos = [a.info for a in found.images]
        channels = h.channels or majority_channels(infos)
        describe_images(infos, channels, h.image_size)
        source = DetectionSource(found.images, found.class_names, channels, h.instance_masks)
        self._describe(source)
        return source

    def _describe(self, source: DetectionSource) -> None:
        counts = np.bincount(np.concatenate([np.zeros(0, np.int64), *source.box_labels]),
                             minlength=len(source.class_names))
        negatives = int((source.labels == 0).sum())
        log.info("%d images (%d without objects), %d objects: %s", len(source), negatives,
                 int(counts.sum()), dict(zip(source.class_names, counts.tolist(), strict=True)))
        warn_rare_classes(np.concatenate([np.zeros(0, np.int64), *source.box_labels]), source.class_names)
        if negatives == len(source):
            raise DataError("no image has an object; a detector needs annotated objects to learn from")

    # -- what the task reads --
    def train_class_counts(self) -> list[int]:
        """Objects per class in the training split."""
        labels = [self.source.box_labels[i] for i in self.train_indices]
        return np.bincount(np.concatenate([np.zeros(0, np.int64), *labels]),
                           minlength=self.num_classes).astype(int).tolist()

    def train_boxes(self) -> np.ndarray:
        """``(N, 4)`` float32 xyxy of every training-split object, in network-input pixels after
        the evaluation resize (no augmentation): what anchor sizes are derived from."""
        boxes = [self.source.boxes_at(int(i), self.hparams.image_size) for i in self.train_indices]
        return np.concatenate([np.zeros((0, 4), np.float32), *boxes]).astype(np.float32)

    # -- datasets and loaders --
    def dataset(self, split: str) -> DetectionDataset:
        self.ensure_stats()
        h = self.hparams
        transform = (TrainDetectionTransform(h.image_size, self.mean, self.std, h.augment, h.min_box_size,
                                             h.min_visibility)
                     if split == "train" else EvalDetectionTransform(h.image_size, self.mean, self.std))
        return DetectionDataset(self.source, self.splits[split], transform)

    def predict_source(self, paths: list[Path]) -> DetectionSource:
        """Files to predict on, opened like the training images; bad ones follow
        ``on_bad_annotation``."""
        policy = BadAnnotationPolicy(self.hparams.on_bad_annotation, self.skipped)
        images = []
        for path in paths:
            try:
                images.append(ImageAnnotations.negative(inspect_image(Path(path))))
            except DataError as err:
                policy(str(path), str(err))
        if not images:
            raise DataError("none of the predict_paths is a readable image; see the reasons above")
        describe_images([a.info for a in images], self.source.channels, self.hparams.image_size)
        return DetectionSource(images, self.class_names, self.source.channels)

    def predict_dataloader(self) -> DataLoader:
        """``predict_paths`` (or the test split) through the evaluation transform; predicted
        boxes map back to the stored image with ``orig_size``."""
        if not self.hparams.predict_paths:
            return self.test_dataloader()
        self.ensure_stats()
        source = self.predict_source(expand_inputs(self.hparams.predict_paths, self.file_extensions))
        transform = EvalDetectionTransform(self.hparams.image_size, self.mean, self.std)
        return self._loader(DetectionDataset(source, np.arange(len(source)), transform), False)
