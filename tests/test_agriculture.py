"""Agriculture domain on synthetic GeoTIFFs written with rasterio in tmp_path."""

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from lightning.pytorch import Trainer
from rasterio.transform import from_origin
from rasterio.windows import Window

from core.data import DataError
from domains.agriculture import (
    GeoTiffFolderDataModule,
    SceneSegmentationDataModule,
    SceneSegmentationTask,
)
from domains.agriculture.indices import compute_indices
from domains.agriculture.raster import RasterStack
from domains.agriculture.scene import SceneWriter, blend_weights, grid_windows
from domains.agriculture.synthetic import BANDS, write_demo_scene, write_scene

from .conftest import TINY, TINY_ARGS


@pytest.fixture
def scene(tmp_path):
    return write_demo_scene(tmp_path / "scene", width=160, height=128, sparse=0.05,
                            patches_per_class=4, patch=16)


def scene_dm(scene, **kwargs):
    args = dict(image=str(scene["scene"]), labels=str(scene["labels"]), class_values=[1, 2, 3],
                class_labels=["water", "crop", "bare_soil"], tile_size=32, block_size=32,
                batch_size=4, samples_per_epoch=8, val_fraction=0.25, test_fraction=0.25)
    return SceneSegmentationDataModule(**{**args, **kwargs})


def test_band_selection_by_name_and_index(scene):
    stack = RasterStack(str(scene["scene"]), bands=["nir", "red"])
    assert stack.names == ["nir", "red"]
    img, valid = stack.read(Window(20, 20, 8, 8))
    with rasterio.open(scene["scene"]) as ds:
        ref = ds.read(window=Window(20, 20, 8, 8)).astype(np.float32)
    assert np.array_equal(img, ref[[3, 2]]) and valid.all()
    assert RasterStack(str(scene["scene"]), bands=[1, 4]).names == ["blue", "nir"]
    with pytest.raises(DataError, match=r"band 'B8' not in the image \(has blue, green, red, nir\)"):
        RasterStack(str(scene["scene"]), bands=["B8"])
    with pytest.raises(DataError, match="band index 7 out of range"):
        RasterStack(str(scene["scene"]), bands=[7])


def test_one_file_per_band_and_grid_mismatch(tmp_path, scene):
    with rasterio.open(scene["scene"]) as ds:
        data, transform = ds.read(), ds.transform
    paths = []
    for i, name in enumerate(BANDS):
        paths.append(tmp_path / f"{name}.tif")
        write_scene(paths[-1], data[i : i + 1], transform)
    stack = RasterStack([str(p) for p in paths], bands=["red", "nir"])
    assert stack.names == ["red", "nir"]
    assert np.array_equal(stack.read(Window(10, 10, 4, 4))[0], data[[2, 3], 10:14, 10:14].astype(np.float32))
    shifted = tmp_path / "shifted.tif"
    write_scene(shifted, data[:1], from_origin(500100.0, 4500000.0, 10.0, 10.0))
    with pytest.raises(DataError, match="shifted.tif.*is not on the grid"):
        RasterStack([str(paths[0]), str(shifted)])


def test_nodata_is_invalid_and_excluded_from_stats_and_loss(scene):
    dm = scene_dm(scene)
    dm.setup("fit")
    dm.ensure_stats()
    # Reference: valid pixels (not the 0 nodata frame) of the training tiles only.
    with rasterio.open(scene["scene"]) as ds:
        full = ds.read().astype(np.float64)
    values = []
    for i in dm.splits["train"]:
        w = dm.source.windows[i]
        r, c = int(w.row_off), int(w.col_off)
        tile = full[:, r : r + 32, c : c + 32]
        ok = (tile != 0).all(axis=0)
        values.append(tile[0][ok])
    assert dm.mean[0] == pytest.approx(np.concatenate(values).mean(), rel=1e-6)
    # The frame is nodata: ignored in the mask, never a class.
    corner = dm.source.read_window(Window(0, 0, 32, 32), "corner")
    assert (corner["mask"][:8] == 255).all() and np.isnan(corner["image"][:8]).all()


def test_sparse_labels_and_class_counts(scene):
    dm = scene_dm(scene)
    with rasterio.open(scene["labels"]) as ds:
        labels = ds.read(1)
    counts = dm.source.class_pixels.sum(axis=0)
    assert counts.tolist() == [int((labels == v).sum()) for v in (1, 2, 3)]
    sample = dm.source.read(5)
    assert set(np.unique(sample["mask"])) <= {0, 1, 2, 255}
    assert (sample["mask"] == 255).mean() > 0.8  # ~5 % of pixels are labelled


def test_label_grid_checks(tmp_path, scene):
    with rasterio.open(scene["labels"]) as ds:
        labels, transform = ds.read(), ds.transform
    # Same grid, other CRS tag (as in the NC Landsat sample): reported, not fatal.
    retagged = tmp_path / "retagged.tif"
    write_scene(retagged, labels, transform, crs="EPSG:3358", nodata=None)
    dm = scene_dm(scene, labels=str(retagged))
    assert dm.num_classes == 3 and "identical" in dm.label_warnings[0]
    # Another grid: an error naming the fix, or a warp when asked for.
    moved = tmp_path / "moved.tif"
    write_scene(moved, labels, from_origin(500050.0, 4500000.0, 10.0, 10.0), nodata=None)
    with pytest.raises(DataError, match="moved.tif.*not on the image grid.*reproject_labels: true"):
        _ = scene_dm(scene, labels=str(moved)).source
    warped = scene_dm(scene, labels=str(moved), reproject_labels=True)
    mask = warped.source.label.read(Window(10, 20, 30, 30))
    with rasterio.open(scene["labels"]) as ds:
        # The moved raster starts 50 m (5 px) east: image column i holds its column i - 5.
        original = ds.read(1, window=Window(5, 20, 30, 30))
    expected = np.full(original.shape, 255)
    for k, v in enumerate((1, 2, 3)):
        expected[original == v] = k
    assert np.array_equal(mask, expected)


def test_spatial_block_splits_are_disjoint(scene):
    dm = scene_dm(scene, block_size=64)
    dm.setup("fit")
    blocks = {s: {dm.source.blocks[i] for i in idx} for s, idx in dm.splits.items()}
    assert not blocks["train"] & blocks["val"] and not blocks["train"] & blocks["test"]
    assert not blocks["val"] & blocks["test"]
    covered = np.zeros((128, 160), dtype=int)
    for i, w in enumerate(dm.source.windows):  # no tile sees pixels of another block
        b = dm.source.block_windows[dm.source.blocks[i]]
        sample = dm.source.read(i)
        r, c = np.nonzero(~np.isnan(sample["image"][..., 0]) | (sample["mask"] != 255))
        r, c = r + int(w.row_off), c + int(w.col_off)
        assert (b.row_off <= r).all() and (r < b.row_off + b.height).all()
        assert (b.col_off <= c).all() and (c < b.col_off + b.width).all()
        covered[r, c] += 1
    assert covered.max() == 1  # every pixel is in at most one tile: nothing is scored twice
    # Random training tiles stay inside training blocks.
    seen = []
    original = dm.source.read_window
    dm.source.read_window = lambda w, i, clip=None: seen.append(w) or original(w, i, clip)
    for _ in range(2):
        next(iter(dm.train_dataloader()))
    train_blocks = [dm.source.block_windows[b] for b in blocks["train"]]
    for w in seen:
        assert any(b.col_off <= w.col_off < b.col_off + b.width and b.row_off <= w.row_off < b.row_off + b.height
                   for b in train_blocks)


def test_block_must_hold_a_tile(scene):
    with pytest.raises(DataError, match="block_size 16 is smaller than tile_size 32"):
        scene_dm(scene, block_size=16)


def test_spectral_indices_by_role(scene):
    image = np.array([[[0.1]], [[0.2]], [[0.1]], [[0.5]]], dtype=np.float32)  # blue green red nir
    roles = {"blue": 0, "green": 1, "red": 2, "nir": 3}
    ndvi, ndwi = compute_indices(image, ["NDVI", "ndwi"], roles)
    assert ndvi[0, 0] == pytest.approx((0.5 - 0.1) / 0.6)
    assert ndwi[0, 0] == pytest.approx((0.2 - 0.5) / 0.7)
    dm = scene_dm(scene, indices=["NDVI"])
    assert dm.channel_names == ["blue", "green", "red", "nir", "NDVI"] and dm.in_chans == 5
    with pytest.raises(DataError, match="NDMI needs the swir1 band"):
        _ = scene_dm(scene, indices=["NDMI"]).in_chans
    renamed = scene_dm(scene, band_names=["B1", "B2", "B3", "B4"], band_roles={"red": "B3", "nir": "B4"},
                       indices=["NDVI"])
    assert renamed.channel_names[-1] == "NDVI"


def test_tile_classification_folder(scene):
    dm = GeoTiffFolderDataModule(root=str(scene["patches"]), image_size=16, indices=["NDVI"],
                                 val_fraction=0.25, test_fraction=0.25, batch_size=4)
    assert dm.class_names == ["bare_soil", "crop", "water"]
    assert dm.in_chans == 5 and dm.channel_names[:4] == BANDS
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 5, 16, 16)


def test_grid_windows_cover_and_blend():
    windows = grid_windows(100, 70, 32, 8)
    covered = np.zeros((70, 100), dtype=int)
    for w in windows:
        covered[w.row_off : w.row_off + 32, w.col_off : w.col_off + 32] += 1
        assert w.col_off + 32 <= 100 and w.row_off + 32 <= 70
    assert covered.min() >= 1
    rows = [w.row_off for w in windows]
    assert rows == sorted(rows)  # row-major: the writer relies on it
    weights = blend_weights(32, 8)
    assert weights[16, 16] == 1.0 and weights[0, 0] < weights[4, 4] < 1.0


def test_scene_writer_blends_and_keeps_georeference(tmp_path):
    profile = {"width": 100, "height": 70, "crs": "EPSG:32633",
               "transform": from_origin(500000.0, 4500000.0, 10.0, 10.0)}
    writer = SceneWriter(tmp_path / "out.tif", profile, ["a", "b"], tile=32, overlap=8,
                         probabilities_path=tmp_path / "p.tif")
    for w in grid_windows(100, 70, 32, 8):
        probs = np.zeros((2, 32, 32), dtype=np.float32)
        cols = np.arange(w.col_off, w.col_off + 32)
        probs[1] = (cols >= 50)[None, :]  # class b right of column 50
        probs[0] = 1 - probs[1]
        valid = np.ones((32, 32), dtype=bool)
        if w.row_off == 0 and w.col_off == 0:
            valid[:4, :4] = False  # nodata corner
        writer.add(w, probs, valid)
        assert writer.acc.shape == (2, 32, 100)  # one strip in memory, not the scene
    writer.close()
    with rasterio.open(tmp_path / "out.tif") as ds:
        classes = ds.read(1)
        assert (ds.width, ds.height, ds.transform) == (100, 70, profile["transform"])
        assert ds.crs.to_string() == "EPSG:32633" and ds.nodata == 255
    assert (classes[:4, :4] == 255).all()
    assert (classes[10:, :50] == 0).all() and (classes[10:, 50:] == 1).all()
    with rasterio.open(tmp_path / "p.tif") as ds:
        assert ds.count == 2 and np.allclose(ds.read()[:, 10:, :].sum(axis=0), 1.0)


class OracleTask(SceneSegmentationTask):
    """Classifies each pixel from its (normalised) NIR and red values like the synthetic scene's
    generator does, so whole-scene prediction can be checked pixel by pixel."""

    def forward(self, x):
        dm = self.trainer.datamodule
        mean, std = (torch.tensor(v, dtype=x.dtype).view(1, -1, 1, 1) for v in (dm.mean, dm.std))
        raw = x * std + mean  # undo normalisation: reflectance x 10000
        nir, red = raw[:, 3], raw[:, 2]
        water = (nir < 1500).float()
        crop = ((nir >= 1500) & (red < 1300)).float()
        soil = 1 - water - crop
        return torch.stack([water, crop, soil], dim=1) * 20.0


def test_whole_scene_prediction_is_georeferenced_and_correct(tmp_path, scene):
    # A 4-band scene many tiles wide and tall, predicted tile by tile with overlap.
    big = write_demo_scene(tmp_path / "big", width=300, height=140, seed=3, patches_per_class=1)
    dm = scene_dm(scene, predict_image=str(big["scene"]), predict_overlap=8,
                  predict_output=str(tmp_path / "pred" / "classes.tif"), write_probabilities=True,
                  batch_size=5)
    task = OracleTask(**TINY, in_chans=4, num_classes=3, class_names=dm.class_names,
                      decoder_channels=8)
    requested = []
    original = RasterStack.read

    def spy(self, window):
        requested.append((int(window.width), int(window.height)))
        return original(self, window)

    RasterStack.read = spy
    try:
        Trainer(accelerator="cpu", logger=False, enable_progress_bar=False).predict(task, datamodule=dm)
    finally:
        RasterStack.read = original
    assert requested and max(requested) == (32, 32)  # windows only, never the whole raster
    assert len(requested) >= len(grid_windows(300, 140, 32, 8))
    with rasterio.open(big["scene"]) as src, rasterio.open(tmp_path / "pred" / "classes.tif") as out:
        assert (out.crs, out.transform, out.width, out.height) == (src.crs, src.transform, src.width, src.height)
        classes = out.read(1)
        nodata_in = (src.read() == 0).all(axis=0)
        assert out.nodata == 255 and out.profile["compress"] == "deflate"
    with rasterio.open(big["labels"]) as ds:
        truth = ds.read(1).astype(int) - 1  # codes 1..3 -> classes 0..2, border 0 -> -1
    assert (classes[nodata_in] == 255).all()
    inside = ~nodata_in
    assert (classes[inside] == truth[inside]).mean() > 0.99
    with rasterio.open(tmp_path / "pred" / "classes_probabilities.tif") as probs:
        assert probs.count == 3 and probs.descriptions[0] == "P(water)"


def test_cli_fit_then_predict_scene_from_checkpoint(tmp_path, monkeypatch):
    """The documented commands: fit, then predict a scene with the checkpoint's statistics."""
    from core.cli import run_cli

    monkeypatch.chdir(tmp_path)
    data = write_demo_scene(tmp_path / "agri", 96, 96, sparse=0.2, patches_per_class=1)
    config = Path(__file__).resolve().parents[1] / "configs" / "agriculture" / "segmentation.yaml"
    base = ["--config", str(config), *TINY_ARGS, "--model.init_args.decoder_channels=16",
            f"--data.init_args.image={data['scene']}", f"--data.init_args.labels={data['labels']}",
            "--data.init_args.tile_size=32", "--data.init_args.block_size=32",
            "--data.init_args.samples_per_epoch=8", "--data.init_args.num_workers=0",
            f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}"]
    fit = run_cli(["fit", *base, "--trainer.max_epochs=1"])
    ckpt = Path(fit.trainer.log_dir) / "checkpoints" / "last.ckpt"
    stats = torch.load(ckpt, map_location="cpu", weights_only=False)["preprocessing"]
    assert stats["channel_names"] == ["blue", "green", "red", "nir", "NDVI", "NDWI"]
    # One input size: the tile. The config's image_size (default 224) is neither the
    # contract's nor what validation resizes tiles to.
    assert len(stats["mean"]) == 6 and stats["image_size"] == 32 and "tile_size" not in stats
    assert next(iter(fit.datamodule.val_dataloader()))["image"].shape[-2:] == (32, 32)
    assert stats["band_roles"]["red"] == "red" and stats["band_roles"]["nir"] == "nir"  # roles used
    monkeypatch.setattr(SceneSegmentationDataModule, "compute_stats",
                        lambda self: pytest.fail("statistics recomputed instead of restored"))
    pred = run_cli(["predict", *base, f"--ckpt_path={ckpt}", f"--data.init_args.predict_image={data['scene']}"])
    assert pred.datamodule.mean == stats["mean"]
    out = Path(pred.trainer.log_dir) / "scene_classes.tif"
    with rasterio.open(out) as ds, rasterio.open(data["scene"]) as src:
        assert (ds.crs, ds.transform, ds.shape) == (src.crs, src.transform, src.shape)
        assert set(np.unique(ds.read(1)).tolist()) <= {0, 1, 2, 255}


def test_blocks_are_stratified_by_their_rarest_class(scene):
    dm = scene_dm(scene, block_size=64)
    src = dm.source
    totals = src.class_pixels.sum(axis=0)
    strata = dm.strata()
    for i, block in enumerate(src.blocks):
        in_block = src.class_pixels[np.asarray(src.blocks) == block].sum(axis=0)
        present = np.flatnonzero(in_block)
        expected = present[np.argmin(totals[present])] if present.size else -1
        assert strata[i] == expected
