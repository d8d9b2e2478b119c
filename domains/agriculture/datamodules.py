"""Agriculture datamodules: scene segmentation from GeoTIFFs, and GeoTIFF patch classification."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from rasterio.windows import Window
from torch.utils.data import DataLoader, Dataset, Sampler

from core.data import ConvNeXtDataModule, DataError, apply_transform, scan_class_folders
from core.filescan import OnBadFile
from core.transforms import eval_transform, train_transform
from domains.agriculture.bands import check_same_bands
from domains.agriculture.contract import GeoTiffPatchContract, GeoTiffSceneContract
from domains.agriculture.plugin import GEOTIFF_PATCH, GEOTIFF_SCENE
from domains.agriculture.raster import LabelRaster
from domains.agriculture.scene import grid_windows
from domains.agriculture.sources import (
    BandSpec,
    PatchFolderSource,
    SceneTileSource,
    dominant_weights,
    profile_of,
    scan_patches,
)


class TileDraws(Sampler):
    """``length`` random training tiles per epoch, as ``(slot, column offset, row offset)``:
    a tile slot drawn by weight, then a position inside its spatial block.

    The draws are the sampler's, not the dataset's: from a generator seeded with ``seed`` and
    the epoch, so every DDP rank draws the same list and Lightning's distributed wrapper gives
    each rank a disjoint share of it (a dataset drawing from torch's global RNG would make every
    rank read the same tiles). ``set_epoch`` is honoured; without it (inside Lightning's
    wrapper) each pass over the sampler counts as the next epoch.

    Args:
        slots: tile slots of the training split (indices into the source's tiles).
        weights: sampling weight per slot (oversampling).
        spans: per slot, how many column and row offsets its block allows.
        length: tiles per epoch.
        seed: base seed of the draws.
    """

    def __init__(self, slots: np.ndarray, weights: np.ndarray, spans: np.ndarray, length: int,
                 seed: int) -> None:
        self.slots, self.spans = np.asarray(slots), np.asarray(spans, dtype=np.int64).reshape(-1, 2)
        weights = np.asarray(weights, dtype=np.float64)
        self.weights = weights / weights.sum()
        self.length, self.seed, self.epoch = length, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        picks = rng.choice(len(self.weights), size=self.length, p=self.weights)
        offsets = np.floor(rng.random((self.length, 2)) * self.spans[picks]).astype(np.int64)
        for pick, (dc, dr) in zip(picks.tolist(), offsets.tolist(), strict=True):
            yield int(self.slots[pick]), dc, dr


class RandomTiles(Dataset):
    """Training tiles at the positions :class:`TileDraws` gives (its items are the keys), so
    a tile never crosses into another split's block."""

    def __init__(self, source: SceneTileSource, transform) -> None:
        self.source, self.transform = source, transform

    def spans(self, slots: np.ndarray) -> np.ndarray:
        """Per slot, the number of column and row offsets a tile has inside its block."""
        tile = self.source.tile
        blocks = [self.source.block_windows[self.source.blocks[int(j)]] for j in slots]
        return np.array([[max(1, int(b.width) - tile + 1), max(1, int(b.height) - tile + 1)]
                         for b in blocks], dtype=np.int64).reshape(-1, 2)

    def __getitem__(self, draw: tuple[int, int, int]) -> dict[str, Any]:
        j, dc, dr = draw
        block = self.source.block_windows[self.source.blocks[j]]
        tile = self.source.tile
        window = Window(block.col_off + dc, block.row_off + dr, tile, tile)
        sample = self.source.read_window(window, f"r{int(window.row_off)}_c{int(window.col_off)}", block)
        return apply_transform(self.transform, sample)


class SceneWindows(Dataset):
    """Overlapping grid tiles over a whole scene for prediction, in row-major order."""

    def __init__(self, spec: BandSpec, stack, tile: int, overlap: int, transform) -> None:
        self.spec, self.stack, self.transform = spec, stack, transform
        self.windows = grid_windows(stack.width, stack.height, tile, overlap)

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        w = self.windows[i]
        image, valid = self.spec.read(self.stack, w)
        sample = apply_transform(self.transform, {"image": image, "id": f"r{int(w.row_off)}_c{int(w.col_off)}"})
        sample["valid"] = torch.from_numpy(valid)
        sample["window"] = torch.tensor([int(w.col_off), int(w.row_off), int(w.width), int(w.height)])
        return sample


class _BandsMixin:
    """Band options shared by the agriculture datamodules.

    Their sources name the channels for the model: band roles where evidence gives them, else
    band names (:meth:`BandSpec.channel_names`); red/green/blue get pretrained RGB stem filters.
    """

    spec: BandSpec

    def band_fields(self) -> dict[str, Any]:
        """The band fields of the GeoTIFF readers' contracts."""
        return {**self.spec.contract(self.source.stack), "channel_names": self.channel_names}

    def scene_tiles_loader(self, purpose: str) -> DataLoader:
        """Overlapping ``tile_size`` tiles over ``predict_image``, with their windows and valid
        masks, after checking the scene has training's bands; ``purpose`` completes the error
        when no scene is set ("to predict")."""
        h = self.hparams
        if h.predict_image is None:
            raise DataError(f"set data.init_args.predict_image to the GeoTIFF scene {purpose}")
        self.ensure_stats()
        stack = self.spec.open(h.predict_image)
        train = self.source.stack
        check_same_bands(stack, train.names, train.file_band_count, str(h.predict_image),
                         "the training image has")
        self.predict_stack = stack
        dataset = SceneWindows(self.spec, stack, h.tile_size, h.predict_overlap,
                               eval_transform(h.tile_size, self.mean, self.std))
        return self._loader(dataset, shuffle=False)


class SceneSegmentationDataModule(_BandsMixin, ConvNeXtDataModule):
    """Semantic segmentation of a multispectral scene with a label raster on the same grid.

    The scene is cut into square spatial blocks of ``block_size`` pixels; whole blocks go to
    train, val or test (stratified by the rarest class present in each block, seeded), so
    neighbouring pixels never straddle splits. Training draws ``samples_per_epoch`` random
    tiles inside training blocks; val/test use the regular tile grid of their blocks (tiles
    without labels skipped).
    Normalisation statistics come from the training blocks, ignoring nodata.

    Args:
        image: one multiband GeoTIFF, or a list of files (one per band).
        labels: label GeoTIFF on the image grid (dense classes or sparse labelled pixels).
        class_values: label raster codes of the classes, in class order; other codes and the
            label nodata are unlabelled.
        class_labels: names of the classes, one per class value (default ``class_<code>``).
            (Not ``class_names``: that key belongs to the model, which gets it linked.)
        bands: bands to use, by name or 1-based index (default all).
        band_names: names of the bands of a single multiband file, e.g. [blue, green, red, nir].
        band_roles: map roles (red, nir, green, swir1, ...) to band names for spectral indices
            when the names are not the roles themselves, e.g. ``{red: B3, nir: B4}``. Roles
            are never guessed from band positions; the roles used are logged and stored in
            the checkpoint's preprocessing contract.
        sensor: ``sentinel2``, ``landsat8``, ``landsat9``, ``landsat7`` or ``landsat5``: read
            band names such as B4/B04 as that sensor's band numbers to find the roles.
            A band with a role is given to the model as a channel named by the role, so with
            pretrained RGB weights the red/green/blue bands get the matching stem filters and
            the others (and all bands when no role is known) the mean filter.
        nodata: nodata value overriding the files' own.
        indices: spectral indices to append as channels (NDVI, NDWI, NDMI, NDBI, NBR, SAVI).
        reproject_labels: warp a label raster on another grid onto the image grid.
        tile_size: network input size in pixels.
        block_size: spatial block size in pixels (>= tile_size); the unit of the split.
        samples_per_epoch: random training tiles per epoch.
        oversample: ``none``, ``labelled`` (only tiles with labels) or ``rare`` (tiles with
            rare classes more often).
        ignore_index: mask value of unlabelled and nodata pixels.
        predict_image: scene to predict (same band layout as ``image``); any size.
        predict_overlap: overlap of prediction tiles in pixels (blended).
        predict_output: output class map path (default: ``<log_dir>/<scene>_classes.tif``).
        write_probabilities: also write a float32 GeoTIFF of per-class probabilities.
        val_fraction: share of the spatial blocks held out for validation.
        test_fraction: share of the spatial blocks held out for testing.
        augment: training augmentation level; ``dihedral`` (flips and 90° rotations) suits
            overhead imagery, which has no "up".
        **kwargs: options of :class:`~core.data.ConvNeXtDataModule` (``image_size`` is the
            tile size).
    """

    def __init__(
        self,
        image: str | list[str] | None = None,
        labels: str | None = None,
        class_values: list[int] | None = None,
        class_labels: list[str] | None = None,
        bands: list[str | int] | None = None,
        band_names: list[str] | None = None,
        band_roles: dict[str, str] | None = None,
        sensor: str | None = None,
        nodata: float | None = None,
        indices: list[str] | None = None,
        reproject_labels: bool = False,
        tile_size: int = 64,
        block_size: int = 128,
        samples_per_epoch: int = 256,
        oversample: Literal["none", "labelled", "rare"] = "labelled",
        ignore_index: int = 255,
        predict_image: str | list[str] | None = None,
        predict_overlap: int = 16,
        predict_output: str | None = None,
        write_probabilities: bool = False,
        val_fraction: float = 0.2,
        test_fraction: float = 0.2,
        augment: Literal["none", "flips", "dihedral", "default", "strong"] = "dihedral",
        **kwargs: Any,
    ) -> None:
        super().__init__(val_fraction=val_fraction, test_fraction=test_fraction, augment=augment, **kwargs)
        # The network input of a scene is its tile. LightningCLI records the init arguments as
        # configured (image_size defaulting to 224), and evaluation, the saved state and the
        # input contract read image_size: it must say tile_size, or val/test tiles get resized.
        self.hparams.image_size = tile_size
        if image is None or labels is None or not class_values:
            raise DataError("set data.init_args.image (GeoTIFF or list of band files), labels "
                            "(label GeoTIFF) and class_values (label codes of the classes)")
        if len(set(class_values)) < 2:
            raise DataError(
                f"class_values {list(class_values)} give {len(set(class_values))} class; a "
                "segmentation task needs the background and the object classes, e.g. class_values: "
                f"[0, {class_values[0] if class_values[0] != 0 else 255}] for a mask with 0 as "
                "background (codes not listed are unlabelled and never trained on)"
            )
        if block_size < tile_size:
            raise DataError(f"block_size {block_size} is smaller than tile_size {tile_size}; a tile "
                            "must fit in one spatial block (raise block_size or lower tile_size)")
        if not 0 <= predict_overlap < tile_size:
            raise DataError(f"predict_overlap {predict_overlap} must be at least 0 and smaller than "
                            f"tile_size {tile_size}")
        if class_labels is not None and len(class_labels) != len(class_values):
            raise DataError(f"{len(class_labels)} class_labels for {len(class_values)} class_values")
        self.spec = BandSpec(bands, band_names, band_roles, nodata, list(indices or []), sensor)

    def build_source(self) -> SceneTileSource:
        """The scene's tiles in spatial blocks, labelled from the label raster."""
        h = self.hparams
        stack = self.spec.open(h.image)
        label = LabelRaster(h.labels, stack, h.class_values, h.ignore_index, h.reproject_labels)
        names = h.class_labels or [f"class_{v}" for v in h.class_values]
        source = SceneTileSource(stack, self.spec, label, h.tile_size, h.block_size,
                                 len(h.class_values), h.ignore_index, class_names=names)
        if source.class_pixels.sum() == 0:
            if source.labelled_on_nodata:
                raise DataError(f"every labelled pixel of '{h.labels}' ({source.labelled_on_nodata}) lies where "
                                f"a band of '{h.image}' is nodata; check the bands' nodata values (`nodata`) "
                                "and that the labels belong to this scene")
            raise DataError(f"label raster '{h.labels}' has no pixel with a value in class_values "
                            f"{list(h.class_values)}; check class_values and the label nodata")
        return source

    @property
    def label_warnings(self) -> list[str]:
        """Problems with the label raster that were reported rather than fatal."""
        return self.source.label.warnings

    def strata(self) -> list[int]:
        """Each tile is stratified by the rarest class present in its block (-1: no labels).

        Stratifying blocks by their dominant class lets rare classes (often a few small
        patches) all land in one split; keying on the rarest class spreads them over
        train, val and test in proportion.
        """
        source = self.source
        blocks = np.asarray(source.blocks)
        per_block = np.zeros((len(source.block_windows), source.class_pixels.shape[1]), dtype=np.int64)
        np.add.at(per_block, blocks, source.class_pixels)
        frequency = source.class_pixels.sum(axis=0).astype(float)
        rarity = np.where(per_block > 0, frequency[None, :], np.inf)
        rarest = np.where(per_block.sum(axis=1) > 0, rarity.argmin(axis=1), -1)
        return rarest[blocks].tolist()

    def refine_splits(self, splits: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Evaluation tiles without any labelled pixel are dropped: they would only cost time."""
        labelled = self.source.labels >= 0
        return {s: idx if s == "train" else idx[labelled[idx]] for s, idx in splits.items()}

    def train_class_counts(self) -> list[int]:
        return self.source.class_pixels[self.train_indices].sum(axis=0).tolist()

    def train_dataloader(self) -> DataLoader:
        h = self.hparams
        if h.get("unlabelled_paths"):
            raise DataError("unlabelled_paths is not supported for scene tiles; pretrain on the training "
                            "blocks of the labelled scene, or on unlabelled patches with "
                            "GeoTiffFolderDataModule")
        self.ensure_stats()
        idx = self.splits["train"]
        weights = dominant_weights(self.source.class_pixels[idx], h.oversample)
        dataset = RandomTiles(self.source, train_transform(h.tile_size, self.mean, self.std, h.augment))
        # Seeded by seed_everything, the same on every rank (see TileDraws).
        draws = TileDraws(idx, weights, dataset.spans(idx), h.samples_per_epoch, torch.initial_seed())
        return self._loader(dataset, shuffle=False, sampler=draws)

    def predict_dataloader(self) -> DataLoader:
        return self.scene_tiles_loader("to predict")

    def scene_output(self, log_dir: str | None) -> dict[str, Any]:
        """Where and how the predicted scene is written (used by the scene prediction writer)."""
        h = self.hparams
        source = h.predict_image if isinstance(h.predict_image, str) else h.predict_image[0]
        out = Path(h.predict_output) if h.predict_output else Path(log_dir or ".") / f"{Path(source).stem}_classes.tif"
        return {
            "path": out,
            "probabilities_path": out.with_name(out.stem + "_probabilities.tif") if h.write_probabilities else None,
            "profile": profile_of(self.predict_stack),
            "channel_names": self.channel_names,
            "tile": h.tile_size,
            "overlap": h.predict_overlap,
        }

    def input_contract(self) -> GeoTiffSceneContract:
        """The scene reader's contract: bands, tiles (``image_size``) and their overlap."""
        h = self.hparams
        return GEOTIFF_SCENE.contract(**self.contract_fields(), **self.band_fields(),
                                      predict_overlap=h.predict_overlap, ignore_index=h.ignore_index,
                                      class_values=list(h.class_values))


class GeoTiffFolderDataModule(_BandsMixin, ConvNeXtDataModule):
    """Tile classification: ``root/<class>/*.tif`` GeoTIFF patches (EuroSAT layout).

    Args:
        root: folder with one sub-folder of GeoTIFF patches per class.
        bands: bands to use, by name or 1-based index (default all); every patch must have
            the bands of the first one.
        band_names: names of the bands of the patches, e.g. [blue, green, red, nir].
        band_roles: map roles (red, nir, green, swir1, ...) to band names for spectral indices
            when the names are not the roles themselves, e.g. ``{red: B4, nir: B8}``; never
            guessed from band positions.
        sensor: ``sentinel2``, ``landsat8``, ``landsat9``, ``landsat7`` or ``landsat5``: read
            band names such as B4/B04 as that sensor's band numbers to find the roles.
        nodata: nodata value overriding the files' own.
        indices: spectral indices to append as channels (NDVI, NDWI, NDMI, NDBI, NBR, SAVI).
        augment: training augmentation level; ``dihedral`` (flips and 90° rotations) suits
            overhead imagery, which has no "up".
        on_bad_file: every patch is read once before training; one that cannot be read, has
            other bands than the rest, or has no valid pixel (all nodata: e.g. an edge tile of
            a scene) stops with an error naming it (``error``) or is left out and listed in
            ``skipped_files.csv`` (``skip``). Files to predict on are checked the same way.
        **kwargs: options of :class:`~core.data.ConvNeXtDataModule`.
    """

    def __init__(
        self,
        root: str | None = None,
        bands: list[str | int] | None = None,
        band_names: list[str] | None = None,
        band_roles: dict[str, str] | None = None,
        sensor: str | None = None,
        nodata: float | None = None,
        indices: list[str] | None = None,
        augment: Literal["none", "flips", "dihedral", "default", "strong"] = "dihedral",
        on_bad_file: OnBadFile = "error",
        **kwargs: Any,
    ) -> None:
        super().__init__(augment=augment, **kwargs)
        if root is None:
            raise DataError("set data.init_args.root to a folder with one sub-folder of GeoTIFFs per class")
        self.spec = BandSpec(bands, band_names, band_roles, nodata, list(indices or []), sensor)

    def build_source(self) -> PatchFolderSource:
        """One sample per patch; the class folders are the classes."""
        files, names, classes = scan_class_folders(self.hparams.root, (".tif", ".tiff"))
        usable = scan_patches(files, self.spec, self.hparams.on_bad_file, self.skipped)
        kept = [i for i, ok in enumerate(usable) if ok]
        labels = np.array([classes.index(names[i]) for i in kept], dtype=np.int64)
        return PatchFolderSource([files[i] for i in kept], labels, self.spec, class_names=classes)

    def predict_source(self, paths: list[Path]) -> PatchFolderSource:
        usable = scan_patches(paths, self.spec, self.hparams.on_bad_file, self.skipped, like=self.source.stack)
        paths = [p for p, ok in zip(paths, usable, strict=True) if ok]
        return PatchFolderSource(paths, np.zeros(len(paths), dtype=np.int64), self.spec,
                                 like=self.source.stack, reference=(self.mean, self.std))

    def input_contract(self) -> GeoTiffPatchContract:
        """The patch reader's contract: the bands and indices of training."""
        return GEOTIFF_PATCH.contract(**self.contract_fields(), **self.band_fields())
