"""The base datamodule: sample sources, splits, normalisation statistics and dataloaders."""

from __future__ import annotations

import abc
import hashlib
import logging
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Sampler

from core.contracts import InputContract
from core.distributed import eval_sampler, rank_zero_dir
from core.errors import DataError
from core.filescan import write_skipped_report
from core.image_reader import IMAGE
from core.preprocess import (  # noqa: F401  (re-exported for domains)
    IMAGE_EXTENSIONS,
    Channels,
    detect_channels,
    expand_inputs,
    is_hidden,
    read_image_file,
    scale_to_unit,
)
from core.scanning import (  # noqa: F401  (re-exported: domains import them from here)
    DEFAULT_MASK_PATTERNS,
    FEW_SAMPLES,
    JPEG_EXTENSIONS,
    encode_labels,
    find_mask,
    matches_patterns,
    read_manifest,
    resolve_paths,
    scan_class_folders,
    warn_rare_classes,
)
from core.splits import SPLITS, split_from_column, stratified_split
from core.transforms import AugmentLevel, eval_transform, seed_worker_transform, train_transform

log = logging.getLogger(__name__)


# ---- sample sources ------------------------------------------------------------------------
class SampleSource(abc.ABC):
    """Picklable reader of labelled samples (sent to dataloader workers), and what the data says
    about itself: class names, channel names and per-sample facts the split needs.

    Subclasses implement :meth:`read_image` returning HWC float32 and pass their samples to
    ``__init__``; the datamodule reads everything else from here, never from its subclasses.

    Args:
        ids: one unique, printable id per sample (never a patient identifier).
        labels: ``(N,)`` class index, or ``(N, K)`` multi-hot.
        class_names: names of the classes in class-index order (empty for prediction sources).
        channel_names: names of the input channels (bands) when they carry meaning, else None.
        groups: per-sample group key (patient, block) kept within one split; None: no groups.
        split: per-sample split name (train/val/test) when the data fixes it; None: drawn.
        strata: per-sample stratification key; None: the label.
    """

    def __init__(
        self,
        ids: Sequence[str],
        labels: np.ndarray,
        *,
        class_names: Sequence[str] = (),
        channel_names: Sequence[str] | None = None,
        groups: Sequence | None = None,
        split: Sequence[str] | None = None,
        strata: Sequence | None = None,
    ) -> None:
        self.ids = list(ids)
        self.labels = np.asarray(labels)
        self.class_names = [str(c) for c in class_names]
        self.channel_names = list(channel_names) if channel_names is not None else None
        self.groups = list(groups) if groups is not None else None
        self.split = list(split) if split is not None else None
        self.strata = list(strata) if strata is not None else None

    def __len__(self) -> int:
        return len(self.ids)

    @abc.abstractmethod
    def read_image(self, index: int) -> np.ndarray:
        """Sample ``index`` as HWC float32."""

    def read(self, index: int) -> dict[str, Any]:
        """One sample: ``image`` (HWC float32), ``label`` or ``mask``, and ``id``."""
        return {"image": self.read_image(index), "label": self.labels[index], "id": self.ids[index]}

    def infer_in_chans(self) -> int:
        """Input channels: one per channel name, else those of the first sample as read."""
        if self.channel_names:
            return len(self.channel_names)
        return int(self.read_image(0).shape[2])


class ImageFileSource(SampleSource):
    """Image files on disk with class-index labels.

    Args:
        paths: the image files.
        labels: class index per file.
        channels: ``gray`` or ``rgb``, what every image is converted to.
        **facts: class names and per-sample facts, as :class:`SampleSource` takes them.
    """

    def __init__(self, paths: Sequence[str | Path], labels: np.ndarray, channels: Channels,
                 **facts: Any) -> None:
        self.paths = [str(p) for p in paths]
        self.channels = channels
        super().__init__(self.paths, labels, **facts)

    def read_image(self, index: int) -> np.ndarray:
        return read_image_file(self.paths[index], self.channels)


class ArraySource(SampleSource):
    """Images already in memory as ``(N, H, W)`` or ``(N, H, W, C)`` arrays."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, ids: Sequence[str], **facts: Any) -> None:
        self.images = images
        super().__init__(ids, labels, **facts)

    def read_image(self, index: int) -> np.ndarray:
        image = scale_to_unit(self.images[index])
        return image[:, :, None] if image.ndim == 2 else image


class TransformedDataset(Dataset):
    """Applies an albumentations pipeline to samples of a source."""

    def __init__(self, source: SampleSource, indices: np.ndarray, transform) -> None:
        self.source, self.indices, self.transform = source, np.asarray(indices), transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return apply_transform(self.transform, self.source.read(int(self.indices[i])))


class ImagesOnly(Dataset):
    """A dataset's samples reduced to ``image`` and ``id`` (for label-free training)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, Any]:
        sample = self.dataset[i]
        return {"image": sample["image"], "id": sample["id"]}


def apply_transform(transform, sample: dict[str, Any]) -> dict[str, Any]:
    """Run an albumentations pipeline on a sample's image (and mask) and make tensors.

    Non-finite pixels (nodata) become 0 after normalisation, i.e. the channel mean, so they
    add nothing to the first convolution; masks mark them as ignored where the domain knows.
    """
    if "mask" in sample:
        out = transform(image=sample["image"], mask=sample["mask"])
        sample["mask"] = torch.as_tensor(out["mask"]).long()
    else:
        out = transform(image=sample["image"])
    sample["image"] = torch.nan_to_num(out["image"], nan=0.0, posinf=0.0, neginf=0.0)
    if "label" in sample:
        sample["label"] = torch.as_tensor(sample["label"])
    return sample


def collate_samples(samples: list[dict[str, Any]], ragged_keys: Sequence[str] = ()) -> dict[str, Any]:
    """``default_collate``, except that ``ragged_keys`` (arrays whose size differs between
    samples, e.g. masks at each image's own size) become lists of tensors."""
    from torch.utils.data import default_collate

    ragged = {k: [torch.as_tensor(s.pop(k)) for s in samples] for k in ragged_keys if k in samples[0]}
    return {**default_collate(samples), **ragged}


# ---- the datamodule ------------------------------------------------------------------------
class ConvNeXtDataModule(LightningDataModule, abc.ABC):
    """Base datamodule: owns the lifecycle, subclasses only describe their data.

    A subclass implements :meth:`build_source`, returning a :class:`SampleSource` that carries
    the samples, the class names, the channel names and the per-sample facts the split needs
    (groups, a given split, strata). The base builds that source once, on first use: in
    :meth:`setup`, or earlier when LightningCLI links ``class_names``/``in_chans``/
    ``channel_names`` into the model before any setup. :meth:`setup` then draws and checks the
    splits once; hooks (:meth:`strata`, :meth:`groups`, :meth:`given_split`,
    :meth:`refine_splits`) may adjust them.

    Args:
        image_size: network input size (int or [h, w]).
        batch_size: samples per batch.
        num_workers: dataloader worker processes.
        val_fraction: fraction of all samples for validation (ignored with given splits).
        test_fraction: fraction of all samples for testing (ignored with given splits).
        seed: split seed; the same seed and data give the same split.
        mean: per-channel normalisation mean; ``None`` computes it on the training split.
        std: per-channel normalisation std; ``None`` computes it on the training split.
        augment: training augmentation level: none, flips, dihedral (flips + 90° rotations),
            default (crop + flips + brightness/contrast) or strong.
        stats_samples: at most this many training samples are read to compute mean/std.
        predict_paths: files or folders to predict on; default: the test split.
        unlabelled_paths: files or folders of extra images without labels, read like
            ``predict_paths``. Label-free tasks (FCMAE pretraining) train on them together with
            the training split; supervised tasks ignore them (with a warning). They must not
            include validation or test images.
    """

    # File endings that count as samples when a folder is given to predict on.
    file_extensions: tuple[str, ...] = IMAGE_EXTENSIONS
    # Sample keys batched as lists (sizes differ between samples); see collate_samples.
    ragged_keys: tuple[str, ...] = ()

    def __init__(
        self,
        image_size: int | list[int] = 224,
        batch_size: int = 32,
        num_workers: int = 0,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        seed: int = 42,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        augment: AugmentLevel = "default",
        stats_samples: int = 512,
        predict_paths: list[str] | None = None,
        unlabelled_paths: list[str] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.mean, self.std = mean, std
        self._source: SampleSource | None = None
        self._in_chans: int | None = None
        self._splits: dict[str, np.ndarray] | None = None
        # (path, reason) of every file left out under ``on_bad_file: skip`` (see core.filescan);
        # written to skipped_files.csv in the run directory.
        self.skipped: list[tuple[str, str]] = []

    # -- what subclasses provide --
    @abc.abstractmethod
    def build_source(self) -> SampleSource:
        """Read the sample list and return its source, with class names (and channel names
        where they carry meaning). Called once; the base caches the result."""

    def strata(self) -> Sequence:
        """Per-sample stratification key: the source's ``strata``, else the label."""
        if self.source.strata is not None:
            return self.source.strata
        labels = self.source.labels
        return [tuple(row) for row in labels] if labels.ndim > 1 else list(labels)

    def groups(self) -> Sequence | None:
        """Per-sample group key (patient, block) kept within one split: the source's."""
        return self.source.groups

    def given_split(self) -> Sequence[str] | None:
        """Per-sample split names when the data fixes them (the source's), else None."""
        return self.source.split

    def refine_splits(self, splits: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Adjust the drawn splits once before they are checked; default unchanged."""
        return splits

    def predict_source(self, paths: list[Path]) -> SampleSource:
        raise DataError(f"{type(self).__name__} cannot predict on files; see its documentation "
                        "for what it predicts on")

    # -- derived facts linked to the model --
    @property
    def source(self) -> SampleSource:
        """The sample source, built by :meth:`build_source` on first use and kept."""
        if self._source is None:
            self._source = self._checked(self.build_source())
        return self._source

    def _checked(self, source: SampleSource) -> SampleSource:
        where = f"{type(self).__name__}.build_source"
        if not isinstance(source, SampleSource):
            raise TypeError(f"{where} returned a {type(source).__name__}, expected a SampleSource")
        if len(source) == 0:
            raise DataError(f"{where} found no samples; check the data settings")
        if len(source.labels) != len(source):
            raise ValueError(f"{where}: {len(source.labels)} labels for {len(source)} samples")
        if not source.class_names:
            raise ValueError(f"{where} returned a source without class_names")
        return source

    @property
    def class_names(self) -> list[str]:
        return list(self.source.class_names)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_chans(self) -> int:
        if self._in_chans is None:
            self._in_chans = self.source.infer_in_chans()
        return self._in_chans

    @property
    def channel_names(self) -> list[str] | None:
        """Names of the input channels (bands); None when they carry no meaning."""
        names = self.source.channel_names
        return list(names) if names is not None else None

    @property
    def positive_classes(self) -> list[str] | None:
        """Classes whose probability makes the binary decision score; None = task default."""
        return None

    # -- splits and statistics --
    def setup(self, stage: str | None = None) -> None:
        """Build the source and the splits (once), and report skipped files."""
        self._ensure_splits()
        self.write_skipped_report()

    @property
    def splits(self) -> dict[str, np.ndarray]:
        """Sample indices per split (train/val/test), drawn once on first use."""
        return self._ensure_splits()

    def _ensure_splits(self) -> dict[str, np.ndarray]:
        if self._splits is None:
            self._splits = self._draw_splits()
        return self._splits

    def _draw_splits(self) -> dict[str, np.ndarray]:
        given = self.given_split()
        if given is not None:
            splits = split_from_column(given)
        else:
            h = self.hparams
            splits = stratified_split(self.strata(), h.val_fraction, h.test_fraction, h.seed, self.groups())
        splits = self.refine_splits(splits)
        sizes = {s: len(v) for s, v in splits.items()}
        log.info("split sizes %s", sizes)
        if sizes["train"] == 0:
            raise DataError(f"the training split is empty ({sizes}); add data or lower "
                            "val_fraction/test_fraction")
        return splits

    def teardown(self, stage: str) -> None:
        self.write_skipped_report()

    def write_skipped_report(self) -> Path | None:
        """``skipped_files.csv`` in the run directory when files were skipped and a trainer runs."""
        trainer = getattr(self, "trainer", None)
        folder = rank_zero_dir(trainer) if trainer is not None else None
        return write_skipped_report(self.skipped, folder) if folder is not None else None

    @property
    def train_indices(self) -> np.ndarray:
        return self.splits["train"]

    def train_class_counts(self) -> list[int]:
        labels = self.source.labels[self.train_indices]
        if labels.ndim > 1:
            return labels.sum(axis=0).astype(int).tolist()
        return np.bincount(labels.astype(int), minlength=self.num_classes).tolist()

    def compute_stats(self) -> tuple[list[float], list[float]]:
        """Per-channel mean/std over (a seeded sample of) the training split's pixels."""
        idx = self.train_indices
        rng = np.random.default_rng(self.hparams.seed)
        if len(idx) > self.hparams.stats_samples:
            idx = rng.choice(idx, self.hparams.stats_samples, replace=False)
        total = total_sq = count = 0
        for i in idx:
            img = self.source.read_image(int(i)).astype(np.float64)
            flat = img.reshape(-1, img.shape[2])
            flat = flat[np.isfinite(flat).all(axis=1)]
            total = total + flat.sum(axis=0)
            total_sq = total_sq + (flat**2).sum(axis=0)
            count += flat.shape[0]
        mean = total / count
        std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
        std = np.where(std < 1e-6, 1.0, std)  # constant channels: avoid division by ~0
        return mean.tolist(), std.tolist()

    def ensure_stats(self) -> None:
        if self.mean is None or self.std is None:
            self.mean, self.std = self.compute_stats()
            log.info("normalisation from training split: mean %s std %s", self.mean, self.std)
        for name, value in (("mean", self.mean), ("std", self.std)):
            if len(value) != self.in_chans:
                raise DataError(f"{name} has {len(value)} values but images have {self.in_chans} "
                                f"channel(s); give one {name} per channel or leave it unset")

    # -- dataloaders --
    def _loader(self, dataset: Dataset, shuffle: bool, sampler: Sampler | None = None) -> DataLoader:
        """A loader of ``dataset``; one with neither ``shuffle`` nor a ``sampler`` is an evaluation
        loader: under DDP each rank reads its share without repeats (:func:`eval_sampler`)."""
        h = self.hparams
        if sampler is None and not shuffle:
            sampler = eval_sampler(dataset)
        return DataLoader(dataset, batch_size=h.batch_size, shuffle=shuffle, sampler=sampler, drop_last=False,
                          num_workers=h.num_workers, persistent_workers=h.num_workers > 0,
                          # Page-locked batches copy to a GPU asynchronously; without CUDA, no use.
                          pin_memory=torch.cuda.is_available(),
                          worker_init_fn=seed_worker_transform,
                          collate_fn=partial(collate_samples, ragged_keys=self.ragged_keys))

    def dataset(self, split: str) -> TransformedDataset:
        self.ensure_stats()
        h = self.hparams
        transform = (train_transform(h.image_size, self.mean, self.std, h.augment) if split == "train"
                     else eval_transform(h.image_size, self.mean, self.std))
        return TransformedDataset(self.source, self.splits[split], transform)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.with_unlabelled(self.dataset("train")), shuffle=True)

    def label_free_run(self) -> bool:
        """Whether the attached task trains without labels (it sets ``uses_labels = False``)."""
        task = getattr(getattr(self, "trainer", None), "lightning_module", None)
        return task is not None and getattr(task, "uses_labels", True) is False

    def with_unlabelled(self, train: Dataset) -> Dataset:
        """The training split plus ``unlabelled_paths`` (images and ids only) for label-free
        tasks; the training split alone otherwise."""
        paths = self.hparams.get("unlabelled_paths")
        if not paths:
            return train
        if not self.label_free_run():
            log.warning("unlabelled_paths (%d entries) are ignored: this task trains on labels; they are "
                        "used by label-free tasks such as `convnext-domains pretrain`", len(paths))
            return train
        files = expand_inputs(paths, self.file_extensions)
        known = getattr(self.source, "paths", None)
        if known is not None:
            held_out = {str(Path(known[i]).resolve()) for s in ("val", "test") for i in self.splits[s]}
            leaked = sorted(str(f) for f in files if str(Path(f).resolve()) in held_out)
            if leaked:
                raise DataError(f"unlabelled_paths include {len(leaked)} validation/test image(s), e.g. "
                                f"'{leaked[0]}'; pretraining must not see evaluation images: remove them "
                                "from unlabelled_paths")
        source = self.predict_source(files)
        h = self.hparams
        extra = TransformedDataset(source, np.arange(len(source)),
                                   train_transform(h.image_size, self.mean, self.std, h.augment))
        log.info("label-free training on %d training-split + %d unlabelled images", len(train), len(extra))
        return ConcatDataset([ImagesOnly(train), ImagesOnly(extra)])

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("val"), shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("test"), shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        if not self.hparams.predict_paths:
            return self.test_dataloader()
        files = expand_inputs(self.hparams.predict_paths, self.file_extensions)
        self.ensure_stats()
        source = self.predict_source(files)
        transform = eval_transform(self.hparams.image_size, self.mean, self.std)
        return self._loader(TransformedDataset(source, np.arange(len(source)), transform), False)

    # -- the input contract --
    def contract_fields(self) -> dict[str, Any]:
        """The fields every reader's input contract has (normalisation statistics computed
        when not set yet)."""
        self.ensure_stats()
        return {"in_chans": self.in_chans, "image_size": self.hparams.image_size,
                "mean": [float(m) for m in self.mean], "std": [float(s) for s in self.std],
                "class_names": self.class_names}

    def input_contract(self) -> InputContract:
        """Everything prediction needs to reproduce training's input pipeline, as the contract
        of the reader of this data (here: image files)."""
        return IMAGE.contract(**self.contract_fields(), channels=getattr(self.source, "channels", None))

    def fingerprint(self) -> dict[str, Any]:
        """Counts and a hash of the sample list: identifies the training data without it."""
        ids = "\n".join(sorted(map(str, self.source.ids)))
        return {
            "num_samples": len(self.source),
            "split_sizes": self.split_sizes(),
            "train_class_counts": self.train_class_counts(),
            "sample_list_sha256": hashlib.sha256(ids.encode()).hexdigest(),
            "split_seed": self.hparams.seed,
        }

    def split_sizes(self) -> dict[str, int]:
        return {s: int(len(self.splits[s])) for s in SPLITS}

    def state_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, "image_size": self.hparams.get("image_size")}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Statistics of the run being resumed or evaluated win over a fresh computation.
        if state_dict.get("mean") is not None:
            self.mean, self.std = state_dict["mean"], state_dict["std"]
        # So does the input size the model was trained at: test/predict with the YAML's default
        # size would silently feed the network other inputs than it learned from.
        trained = state_dict.get("image_size")
        if trained is not None and "image_size" in self.hparams and self.hparams.image_size != trained:
            log.warning("image_size %s of the config differs from the checkpoint's %s: using %s, "
                        "the size the model was trained at", self.hparams.image_size, trained, trained)
            self.hparams.image_size = trained
