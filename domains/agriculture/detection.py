"""Object detection over GeoTIFF scenes: tiles with boxes for training, whole scenes to GeoJSON.

Training tiles are cut inside square spatial blocks (the unit of the train/val/test split, as
for scene segmentation), so no tile of one split sees pixels of another. A tile gets each
object's box clipped to the part of the tile inside its block and the scene; the clipped box
is kept when at least ``min_visibility`` of the object's whole area is inside (the same share
the training augmentation drops boxes under), else the object is left out of that tile.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import numpy as np
from rasterio.windows import Window
from torch.utils.data import DataLoader

from core.annotations import BadAnnotationPolicy, OnBadAnnotation
from core.data import ConvNeXtDataModule, DataError, SampleSource, warn_rare_classes
from core.detection import DetectionTask
from core.detection_data import (
    NEGATIVE,
    DetectionDataset,
    EvalDetectionTransform,
    TrainDetectionTransform,
)
from domains.agriculture.bands import BandSpec
from domains.agriculture.contract import GeoTiffSceneContract
from domains.agriculture.datamodules import _BandsMixin
from domains.agriculture.detection_labels import (
    MaskKind,
    SceneObjects,
    read_geojson_objects,
    read_mask_objects,
)
from domains.agriculture.plugin import GEOTIFF_SCENE
from domains.agriculture.prediction import SceneDetectionWriter
from domains.agriculture.raster import RasterStack
from domains.agriculture.scene import grid_windows
from domains.agriculture.sources import clip_mask

log = logging.getLogger(__name__)


def clip_boxes(boxes: np.ndarray, areas: np.ndarray, region: Window, min_visibility: float
               ) -> tuple[np.ndarray, np.ndarray]:
    """Boxes clipped to ``region`` (scene pixels) and the indices kept: a clipped box stays when
    its area is at least ``min_visibility`` of the object's whole area (``areas``) and positive."""
    x0, y0 = float(region.col_off), float(region.row_off)
    x1, y1 = x0 + float(region.width), y0 + float(region.height)
    clipped = np.stack([np.clip(boxes[:, 0], x0, x1), np.clip(boxes[:, 1], y0, y1),
                        np.clip(boxes[:, 2], x0, x1), np.clip(boxes[:, 3], y0, y1)], axis=1)
    visible = np.clip(clipped[:, 2] - clipped[:, 0], 0, None) * np.clip(clipped[:, 3] - clipped[:, 1], 0, None)
    keep = np.nonzero((visible > 0) & (visible >= min_visibility * areas - 1e-9))[0]
    return clipped[keep], keep


class SceneDetectionSource(SampleSource):
    """Tiles of one scene inside spatial blocks, each with the objects' boxes clipped to it.

    Each block gets a grid of ``tile`` x ``tile`` windows overlapping by ``overlap`` pixels
    (:func:`~domains.agriculture.scene.grid_windows`, the last one shifted back to end at the
    block's edge); a block smaller than a tile (at the scene's edge) gets one window whose pixels
    past the block are nodata. Tiles with no valid pixel (all nodata) are left out and counted
    in :attr:`nodata_tiles`; tiles touching a skipped object of known place (``objects.ignored``)
    are left out and counted in :attr:`ignored_tiles`. ``labels`` is 1 for tiles with objects,
    ``strata`` the rarest class of the tile's block (so rare classes spread over the splits),
    ``groups`` the block.

    Args:
        stack: the scene.
        spec: its band handling (selection, indices, nodata).
        objects: the scene's objects in its pixels.
        tile: tile side in pixels (the network input).
        overlap: overlap of neighbouring tiles inside a block, pixels.
        block: spatial block side in pixels (the unit of the split).
        min_visibility: share of an object's area a tile must hold to keep its clipped box.
        **facts: further :class:`~core.data.SampleSource` facts (``class_names``).
    """

    def __init__(self, stack: RasterStack, spec: BandSpec, objects: SceneObjects, tile: int,
                 overlap: int, block: int, min_visibility: float, **facts: Any) -> None:
        self.stack, self.spec, self.objects, self.tile = stack, spec, objects, tile
        self.windows: list[Window] = []
        self.blocks: list[int] = []
        self.block_windows: list[Window] = []
        self.boxes: list[np.ndarray] = []
        self.box_labels: list[np.ndarray] = []
        self.nodata_tiles = 0
        self.ignored_tiles = 0
        corners = [(c, r) for r in range(0, stack.height, block) for c in range(0, stack.width, block)]
        for b, (c, r) in enumerate(corners):
            bw = Window(c, r, min(block, stack.width - c), min(block, stack.height - r))
            self.block_windows.append(bw)
            for w in grid_windows(int(bw.width), int(bw.height), tile, overlap, c, r):
                _, valid = stack.read(w)
                if not (valid & clip_mask(w, bw)).any():
                    self.nodata_tiles += 1
                    continue
                region = w.intersection(bw)  # the block lies inside the scene
                if len(objects.ignored) and len(clip_boxes(objects.ignored, np.ones(len(objects.ignored)),
                                                           region, 0.0)[1]):
                    self.ignored_tiles += 1  # a skipped object lies here: it must not be background
                    continue
                boxes, keep = clip_boxes(objects.boxes, objects.areas, region, min_visibility)
                self.windows.append(w)
                self.blocks.append(b)
                self.boxes.append((boxes - np.array([w.col_off, w.row_off] * 2)).astype(np.float32))
                self.box_labels.append(objects.labels[keep].astype(np.int64))
        if self.nodata_tiles:
            log.info("%d tile(s) hold only nodata and were left out", self.nodata_tiles)
        if self.ignored_tiles:
            log.warning("%d tile(s) touch a skipped object (see skipped_files.csv) and were left out, "
                        "so it never trains as background", self.ignored_tiles)
        if not self.windows:
            raise DataError(f"scene '{stack.paths[0]}' has no valid pixel (every tile is nodata); check "
                            "the nodata value and the bands")
        ids = [f"r{int(w.row_off)}_c{int(w.col_off)}" for w in self.windows]
        has = np.array([len(lab) > 0 for lab in self.box_labels], np.int64)
        super().__init__(ids, has, groups=self.blocks, strata=self._block_strata(),
                         channel_names=spec.channel_names(stack), **facts)

    def _block_strata(self) -> list[str]:
        totals = Counter(int(k) for lab in self.box_labels for k in lab)
        per_block: dict[int, set[int]] = {}
        for b, lab in zip(self.blocks, self.box_labels, strict=True):
            per_block.setdefault(b, set()).update(int(k) for k in lab)
        names = self.objects.class_names
        rarest = {b: (names[min(ks, key=lambda k: (totals[k], k))] if ks else NEGATIVE)
                  for b, ks in per_block.items()}
        return [rarest[b] for b in self.blocks]

    def read_window(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Tile ``index`` as (HWC float32 with NaN at nodata, valid mask); pixels outside its
        block count as nodata, so no pixel crosses a split."""
        w = self.windows[index]
        image, valid = self.spec.read(self.stack, w)
        valid &= clip_mask(w, self.block_windows[self.blocks[index]])
        image[~valid] = np.nan
        return image, valid

    def read_image(self, index: int) -> np.ndarray:
        return self.read_window(index)[0]

    def read(self, index: int) -> dict[str, Any]:
        """``image``, ``boxes`` (N, 4) in tile pixels, ``labels``, ``id`` and ``orig_size``."""
        return {"image": self.read_image(index), "boxes": self.boxes[index].copy(),
                "labels": self.box_labels[index].copy(), "id": self.ids[index],
                "orig_size": np.array([self.tile, self.tile], np.int64)}

    def boxes_at(self, index: int, image_size: int | list[int]) -> np.ndarray:
        """Tile ``index``'s boxes at the network input size (tiles are the input: no scaling)."""
        return self.boxes[index]


class SceneDetectionDataModule(_BandsMixin, ConvNeXtDataModule):
    """Object detection on a multispectral GeoTIFF scene, with objects from a vector file
    (GeoJSON, Shapefile, GeoPackage) or a mask raster.

    The scene is cut into square spatial blocks of ``block_size`` pixels; whole blocks go to
    train, val or test (stratified by the rarest object class in each block, seeded), and
    tiles stay inside their block. Each tile's objects are the boxes clipped to the tile; an
    object cut by a tile or block border stays in a tile while at least ``min_visibility`` of
    its area is inside it. Tiles that are all nodata are skipped and counted; nodata pixels are
    filled with the channel mean (0 after normalisation), as in scene segmentation.
    ``predict`` cuts ``predict_image`` into overlapping tiles and writes the merged detections
    as GeoJSON and CSV (see :mod:`domains.agriculture.scene_detection`).

    Args:
        image: one multiband GeoTIFF, or a list of files (one per band).
        objects: vector file of the objects (polygons, or points with ``point_buffer``):
            GeoJSON in WGS84 lon/lat (RFC 7946) or the CRS of its legacy ``crs`` member, or a
            Shapefile (``.shp``, or a ``.zip`` of one), GeoPackage or other GDAL vector format
            in its layer's CRS; reprojected to the scene's CRS.
        objects_layer: the layer of ``objects`` holding the objects, when the file has several
            (GeoPackage).
        objects_mask: instead of ``objects``, a mask raster on the scene's grid (or an
            ungeoreferenced mask of the scene's size, used pixel for pixel with a note).
        label_property: feature property (attribute field) holding the class.
        class_labels: object classes in class-index order; vector objects of another class are
            bad annotations. Default: the sorted classes found (vector file), ``class_<code>`` per
            ``class_values`` or ``object`` (masks).
        class_values: ``objects_mask`` with ``mask_kind: class``: the mask codes of the classes,
            in class order; default: one class, every non-zero code.
        mask_kind: ``class``: each connected component of a class code is an object;
            ``instance``: each distinct non-zero code is one object (one class).
        min_mask_area: mask objects with fewer pixels are dropped and counted.
        point_buffer: radius of Point objects in the scene CRS's units (metres for UTM).
        reproject_labels: warp an ``objects_mask`` on another grid onto the scene's.
        on_bad_annotation: ``error`` stops at the first bad feature (no geometry, unknown class,
            a point without ``point_buffer``) naming it and the fix; ``skip`` leaves it out and
            lists it in skipped_files.csv.
        bands: bands to use, by name or 1-based index (default all).
        band_names: names of the bands of a single multiband file, e.g. [blue, green, red, nir].
        band_roles: map roles (red, nir, ...) to band names for spectral indices, e.g.
            ``{red: B3, nir: B4}``; never guessed from band positions.
        sensor: ``sentinel2``, ``landsat8``, ``landsat9``, ``landsat7`` or ``landsat5``: read
            band names such as B4/B04 as that sensor's band numbers to find the roles.
        nodata: nodata value overriding the files' own.
        indices: spectral indices to append as channels (NDVI, NDWI, NDMI, NDBI, NBR, SAVI).
        tile_size: network input size in pixels (the tile side).
        tile_overlap: overlap of neighbouring training/evaluation tiles inside a block, pixels.
        block_size: spatial block size in pixels (>= tile_size); the unit of the split.
        min_visibility: share of an object's area that must lie inside a tile (and, in
            training, inside the augmented tile) for its clipped box to be kept.
        min_box_size: training only: boxes with a side under this many pixels after
            augmentation are dropped.
        predict_image: scene to predict (same bands as ``image``); any size.
        predict_overlap: overlap of prediction tiles in pixels; objects up to this size are
            always seen whole by some tile.
        predict_output: output folder (default: the run's log directory).
        score_threshold: detections kept in the scene output; default the task's operating
            threshold (chosen on validation for ``target_recall``).
        nms_iou: IoU at which the lower-scored of two same-class scene detections is dropped.
        edge_margin: pixels from an inner tile edge within which a detection counts as cut by
            the tile border.
        val_fraction: share of the spatial blocks held out for validation.
        test_fraction: share of the spatial blocks held out for testing.
        augment: training augmentation level; ``dihedral`` (flips and 90° rotations) suits
            overhead imagery.
        **kwargs: options of :class:`~core.data.ConvNeXtDataModule` (``image_size`` is the
            tile size).
    """

    ragged_keys: tuple[str, ...] = ("boxes", "labels")

    def __init__(
        self,
        image: str | list[str] | None = None,
        objects: str | None = None,
        objects_layer: str | None = None,
        objects_mask: str | None = None,
        label_property: str = "class",
        class_labels: list[str] | None = None,
        class_values: list[int] | None = None,
        mask_kind: MaskKind = "class",
        min_mask_area: int = 4,
        point_buffer: float | None = None,
        reproject_labels: bool = False,
        on_bad_annotation: OnBadAnnotation = "error",
        bands: list[str | int] | None = None,
        band_names: list[str] | None = None,
        band_roles: dict[str, str] | None = None,
        sensor: str | None = None,
        nodata: float | None = None,
        indices: list[str] | None = None,
        tile_size: int = 128,
        tile_overlap: int = 0,
        block_size: int = 256,
        min_visibility: float = 0.5,
        min_box_size: float = 2.0,
        predict_image: str | list[str] | None = None,
        predict_overlap: int = 32,
        predict_output: str | None = None,
        score_threshold: float | None = None,
        nms_iou: float = 0.5,
        edge_margin: float = 2.0,
        val_fraction: float = 0.2,
        test_fraction: float = 0.2,
        augment: Literal["none", "flips", "dihedral", "default", "strong"] = "dihedral",
        **kwargs: Any,
    ) -> None:
        super().__init__(val_fraction=val_fraction, test_fraction=test_fraction, augment=augment, **kwargs)
        # Tiles are the network input (see SceneSegmentationDataModule): image_size must say so.
        self.hparams.image_size = tile_size
        if image is None or (objects is None) == (objects_mask is None):
            raise DataError("set data.init_args.image (GeoTIFF or list of band files) and exactly one of "
                            "objects (vector file of the objects) or objects_mask (mask raster on the "
                            "scene's grid)")
        if objects is not None and class_values is not None:
            raise DataError("class_values are the codes of an objects_mask; vector objects take their "
                            "class from label_property: remove class_values (class_labels orders the classes)")
        if objects_mask is not None and objects_layer is not None:
            raise DataError("objects_layer names a layer of the objects vector file; remove it for "
                            "objects_mask")
        if objects_mask is not None and point_buffer is not None:
            raise DataError("point_buffer applies to points of the vector file (objects); remove it for objects_mask")
        if on_bad_annotation not in ("error", "skip"):
            raise DataError(f"on_bad_annotation is '{on_bad_annotation}'; use error or skip")
        if block_size < tile_size:
            raise DataError(f"block_size {block_size} is smaller than tile_size {tile_size}; a tile "
                            "must fit in one spatial block (raise block_size or lower tile_size)")
        for name, value in (("tile_overlap", tile_overlap), ("predict_overlap", predict_overlap)):
            if not 0 <= value < tile_size:
                raise DataError(f"{name} {value} must be at least 0 and smaller than tile_size {tile_size}")
        if not 0.0 < min_visibility <= 1.0:
            raise DataError(f"min_visibility is {min_visibility}; give a share in (0, 1]")
        if point_buffer is not None and point_buffer <= 0:
            raise DataError(f"point_buffer is {point_buffer}; give the objects' radius (> 0) in the "
                            "scene CRS's units")
        self.spec = BandSpec(bands, band_names, band_roles, nodata, list(indices or []), sensor)
        self.label_notes: list[str] = []

    def read_objects(self, stack: RasterStack) -> SceneObjects:
        """The scene's objects as pixel boxes, from ``objects`` or ``objects_mask``."""
        h = self.hparams
        if h.objects is not None:
            policy = BadAnnotationPolicy(h.on_bad_annotation, self.skipped,
                                         left_out="the feature (and the tiles over it)")
            found = read_geojson_objects(h.objects, stack, h.label_property, h.class_labels,
                                         h.point_buffer, policy, h.objects_layer)
        else:
            found = read_mask_objects(h.objects_mask, stack, h.mask_kind, h.class_values, h.class_labels,
                                      h.min_mask_area, h.reproject_labels)
        self.label_notes = list(found.notes)
        return found

    def build_source(self) -> SceneDetectionSource:
        """The scene's tiles in spatial blocks with their clipped boxes."""
        h = self.hparams
        stack = self.spec.open(h.image)
        found = self.read_objects(stack)
        source = SceneDetectionSource(stack, self.spec, found, h.tile_size, h.tile_overlap, h.block_size,
                                      h.min_visibility, class_names=found.class_names)
        labels = np.concatenate([np.zeros(0, np.int64), *source.box_labels])
        counts = np.bincount(labels, minlength=len(found.class_names))
        log.info("%d objects in the scene, %d tiles (%d without objects, %d all-nodata left out); boxes "
                 "per class over tiles: %s", len(found), len(source), int((source.labels == 0).sum()),
                 source.nodata_tiles, dict(zip(found.class_names, counts.tolist(), strict=True)))
        warn_rare_classes(labels, found.class_names)
        if not len(labels):
            raise DataError("no tile holds an object; check that the objects lie on the scene "
                            f"({len(found)} found) and min_visibility {h.min_visibility}")
        return source

    # -- what the task reads --
    def train_class_counts(self) -> list[int]:
        """Object boxes per class over the training tiles."""
        labels = [self.source.box_labels[i] for i in self.train_indices]
        return np.bincount(np.concatenate([np.zeros(0, np.int64), *labels]),
                           minlength=self.num_classes).astype(int).tolist()

    def train_boxes(self) -> np.ndarray:
        """``(N, 4)`` float32 xyxy of every training tile's boxes (anchors are derived from them)."""
        boxes = [self.source.boxes[int(i)] for i in self.train_indices]
        return np.concatenate([np.zeros((0, 4), np.float32), *boxes]).astype(np.float32)

    # -- datasets and loaders --
    def dataset(self, split: str) -> DetectionDataset:
        self.ensure_stats()
        h = self.hparams
        transform = (TrainDetectionTransform(h.tile_size, self.mean, self.std, h.augment, h.min_box_size,
                                             h.min_visibility)
                     if split == "train" else EvalDetectionTransform(h.tile_size, self.mean, self.std))
        return DetectionDataset(self.source, self.splits[split], transform)

    def train_dataloader(self) -> DataLoader:
        if self.hparams.get("unlabelled_paths"):
            raise DataError("unlabelled_paths is not supported for scene tiles; pretrain on patches with "
                            "GeoTiffFolderDataModule")
        return self._loader(self.dataset("train"), shuffle=True)

    def predict_dataloader(self) -> DataLoader:
        """Overlapping tiles over ``predict_image`` (with their windows and valid masks)."""
        return self.scene_tiles_loader("to detect objects in")

    def scene_detection_output(self, log_dir: str | None) -> dict[str, Any]:
        """Where and how the predicted scene's detections are written (see
        :class:`~domains.agriculture.prediction.SceneDetectionWriter`)."""
        h = self.hparams
        source = h.predict_image if isinstance(h.predict_image, str) else h.predict_image[0]
        stack = self.predict_stack
        return {"folder": Path(h.predict_output) if h.predict_output else Path(log_dir or "."),
                "stem": Path(source).stem, "width": stack.width, "height": stack.height,
                "transform": stack.transform, "crs": stack.crs, "tile": h.tile_size,
                "score_threshold": h.score_threshold, "nms_iou": h.nms_iou, "edge_margin": h.edge_margin}

    def input_contract(self) -> GeoTiffSceneContract:
        """The scene reader's contract: bands, tiles (``image_size``) and their overlap."""
        return GEOTIFF_SCENE.contract(**self.contract_fields(), **self.band_fields(),
                                      predict_overlap=self.hparams.predict_overlap)


class SceneDetectionTask(DetectionTask):
    """The core detection task; ``predict`` on a scene writes its merged detections as GeoJSON
    (scene CRS, and WGS84) and CSV (see :class:`~domains.agriculture.prediction.SceneDetectionWriter`).
    Its options are those of :class:`~core.detection.DetectionTask`.
    """

    def prediction_writer(self) -> SceneDetectionWriter:
        return SceneDetectionWriter()
