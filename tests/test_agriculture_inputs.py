"""GeoTIFFs written the way other tools write them: integer data without a nodata tag, no band
descriptions, ungeoreferenced label masks, other CRSs, complex and float64 data, and inputs in
other units than training's. Both predict paths (Lightning and the torch-free bundle code)."""

from __future__ import annotations

import dataclasses
import json
import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from lightning.pytorch import Trainer
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import from_origin
from rasterio.warp import Resampling, calculate_default_transform, reproject
from rasterio.windows import Window
from safetensors.torch import save_file

from core.backbone import ConvNeXtBackbone
from core.bundle import SCHEMA_VERSION
from core.errors import DataError
from core.predict_bundle import read_input, segment_scene
from core.readers import contract_json, read_contract
from domains.agriculture import SceneSegmentationDataModule, SceneSegmentationTask
from domains.agriculture.bands import BandSpec
from domains.agriculture.contract import GeoTiffPatchContract
from domains.agriculture.plugin import GEOTIFF_PATCH
from domains.agriculture.synthetic import write_demo_scene

from .conftest import TINY

CRS = "EPSG:32633"
TRANSFORM = from_origin(500000.0, 4500000.0, 10.0, 10.0)


def write_tif(path: Path, data: np.ndarray, crs: str | None = CRS, transform=TRANSFORM,
              nodata: float | None = None, descriptions: list[str] | None = None) -> Path:
    """A GeoTIFF as other tools write it: by default no nodata tag and no band descriptions;
    ``crs=None, transform=None`` writes a plain TIFF without any georeferencing."""
    profile = {"driver": "GTiff", "width": data.shape[2], "height": data.shape[1],
               "count": data.shape[0], "dtype": data.dtype.name}
    if crs is not None:
        profile["crs"] = crs
    if transform is not None:
        profile["transform"] = transform
    if nodata is not None:
        profile["nodata"] = nodata
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data)
            if descriptions:
                dst.descriptions = tuple(descriptions)
    return path


@pytest.fixture
def demo(tmp_path):
    """The synthetic scene (uint16, 4 described bands, nodata 0) as arrays, 100x70 pixels:
    not a multiple of the 32-pixel tiles, so tiles run past the right and bottom edges."""
    paths = write_demo_scene(tmp_path / "demo", width=100, height=70, sparse=0.3, border=0,
                             patches_per_class=1)
    with rasterio.open(paths["scene"]) as ds, rasterio.open(paths["labels"]) as lab:
        return {**paths, "image": ds.read(), "codes": lab.read()}


def dm_for(image, labels, **kwargs) -> SceneSegmentationDataModule:
    args = dict(image=str(image), labels=str(labels), class_values=[1, 2, 3], tile_size=32,
                block_size=32, batch_size=4, samples_per_epoch=4, val_fraction=0.25,
                test_fraction=0.25, predict_overlap=8)
    return SceneSegmentationDataModule(**{**args, **kwargs})


def uint8_rgb(tmp_path, demo) -> Path:
    """An orthomosaic-like uint8 RGB file: no nodata tag, no descriptions."""
    rgb = (demo["image"][[2, 1, 0]] / 10000 * 255).clip(0, 255).astype(np.uint8)
    return write_tif(tmp_path / "ortho.tif", rgb)


class ConstantTask(SceneSegmentationTask):
    """Class 0 everywhere; ``fail_at`` raises in that predict batch (a crash mid-scene)."""

    fail_at: int | None = None

    def forward(self, x):
        logits = torch.zeros(x.shape[0], self.hparams.num_classes, *x.shape[2:])
        logits[:, 0] = 5.0
        return logits

    def predict_step(self, batch, batch_idx):
        if self.fail_at is not None and batch_idx >= self.fail_at:
            raise RuntimeError("simulated crash in the middle of the scene")
        return super().predict_step(batch, batch_idx)


def lightning_predict(dm, tmp_path, fail_at=None) -> Path:
    """Lightning ``predict`` of ``dm.predict_image`` into tmp_path/pred/classes.tif."""
    task = ConstantTask(**TINY, in_chans=dm.in_chans, num_classes=3, class_names=dm.class_names,
                        decoder_channels=8)
    task.fail_at = fail_at
    Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
            enable_model_summary=False).predict(task, datamodule=dm)
    return tmp_path / "pred" / "classes.tif"


class StubBundle:
    """What segment_scene/read_input use of a bundle: metadata and an ORT-like ``probabilities``."""

    def __init__(self, contract: GeoTiffPatchContract, class_names: list[str],
                 fail_after: int | None = None) -> None:
        self.contract = contract
        self.meta = {"input": contract.to_json(), "class_names": class_names}
        self.calls, self.fail_after = 0, fail_after

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("simulated crash in the middle of the scene")
        probs = np.zeros((batch.shape[0], len(self.meta["class_names"]), *batch.shape[2:]), np.float32)
        probs[:, 0] = 1.0
        return probs


def contract_of(dm: SceneSegmentationDataModule) -> GeoTiffPatchContract:
    """The input contract as a bundle reads it from the JSON a checkpoint stores."""
    dm.setup("fit")
    stored = json.loads(json.dumps(contract_json(dm.input_contract(), SCHEMA_VERSION)))
    return read_contract(stored, SCHEMA_VERSION)


def as_patch(contract: GeoTiffPatchContract) -> GeoTiffPatchContract:
    """The same bands as the patch reader's contract (what a patch classifier's bundle holds)."""
    names = {f.name for f in dataclasses.fields(GeoTiffPatchContract)} - {"reader"}
    return GEOTIFF_PATCH.contract(**{name: getattr(contract, name) for name in names})


# ---- item 4: integer GeoTIFFs without a nodata tag; outputs only on success -----------------
def test_uint8_rgb_without_nodata_trains_and_marks_out_of_scene_pixels_invalid(tmp_path, demo):
    dm = dm_for(uint8_rgb(tmp_path, demo), demo["labels"])
    stack = dm.source.stack
    assert stack.names == ["B1", "B2", "B3"]
    # Inside the scene every pixel is valid (no nodata tag); past the edge nothing is.
    image, valid = stack.read(Window(80, 50, 32, 32))
    assert valid[:20, :20].all() and not valid[20:].any() and not valid[:, 20:].any()
    assert np.isnan(image[:, 20:]).all() and np.isfinite(image[:, :20, :20]).all()
    inside, ok = stack.read(Window(0, 0, 10, 10))  # the read that crashed on uint8
    assert ok.all() and np.array_equal(inside, uint8_rgb_array(tmp_path)[:, :10, :10])
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 32, 32) and torch.isfinite(batch["image"]).all()


def uint8_rgb_array(tmp_path) -> np.ndarray:
    with rasterio.open(tmp_path / "ortho.tif") as ds:
        return ds.read().astype(np.float32)


def test_uint16_pan_band_without_nodata_predicts_on_both_paths(tmp_path, demo):
    pan = write_tif(tmp_path / "pan.tif", demo["image"][3:4])  # uint16, 1 band, no nodata
    dm = dm_for(pan, demo["labels"], predict_image=str(pan),
                predict_output=str(tmp_path / "pred" / "classes.tif"))
    out = lightning_predict(dm, tmp_path)
    with rasterio.open(out) as ds:
        assert ds.shape == (70, 100) and (ds.read(1) == 0).all()  # every pixel valid, class 0
    bundle = StubBundle(contract_of(dm), dm.class_names)
    target = segment_scene(bundle, pan, tmp_path / "ort", batch_size=4)
    with rasterio.open(target) as ds:
        assert (ds.read(1) == 0).all()


def test_failed_bundle_scene_prediction_leaves_no_output(tmp_path, demo):
    dm = dm_for(demo["scene"], demo["labels"])
    bundle = StubBundle(contract_of(dm), dm.class_names, fail_after=1)
    out = tmp_path / "ort"
    with pytest.raises(RuntimeError, match="simulated crash"):
        segment_scene(bundle, Path(demo["scene"]), out, batch_size=2, write_probabilities=True)
    assert list(out.iterdir()) == []  # no class map that looks finished, no temporary files
    # The same call succeeding writes the map, its probabilities and the sidecar, nothing else.
    segment_scene(StubBundle(bundle.contract, dm.class_names), Path(demo["scene"]), out,
                  batch_size=2, write_probabilities=True)
    assert sorted(p.name for p in out.iterdir()) == [
        "scene_classes.json", "scene_classes.tif", "scene_classes_probabilities.tif"]


def test_failed_lightning_scene_prediction_leaves_no_output(tmp_path, demo):
    dm = dm_for(demo["scene"], demo["labels"], predict_image=str(demo["scene"]),
                predict_output=str(tmp_path / "pred" / "classes.tif"), write_probabilities=True)
    with pytest.raises(RuntimeError, match="simulated crash"):
        lightning_predict(dm, tmp_path, fail_at=1)
    assert list((tmp_path / "pred").iterdir()) == []


# ---- item 5: reprojected labels past the edge; ungeoreferenced masks -----------------------
def test_reprojected_labels_are_read_past_the_scene_edge(tmp_path, demo):
    moved = write_tif(tmp_path / "moved.tif", demo["codes"], transform=from_origin(500050.0, 4500000.0, 10.0, 10.0))
    dm = dm_for(demo["scene"], moved, reproject_labels=True)
    mask = dm.source.label.read(Window(80, 40, 32, 32))  # crashed: no boundless WarpedVRT reads
    original = demo["codes"][0]
    expected = np.full((32, 32), 255)
    # Image column c holds the moved raster's column c - 5; beyond the scene nothing is labelled.
    part = original[40:70, 75:95]
    expected[:30, :20] = np.where(np.isin(part, [1, 2, 3]), part.astype(int) - 1, 255)
    assert np.array_equal(mask, expected)
    dm.setup("fit")
    assert dm.num_classes == 3 and next(iter(dm.train_dataloader()))["mask"].shape == (4, 32, 32)


def test_labels_in_another_crs_are_refused_or_warped(tmp_path, demo):
    src = demo["codes"]
    dst_crs = "EPSG:3857"
    bounds = rasterio.transform.array_bounds(70, 100, TRANSFORM)  # west, south, east, north
    transform, width, height = calculate_default_transform(CRS, dst_crs, 100, 70, *bounds)
    warped = np.zeros((1, height, width), dtype=np.uint8)
    reproject(src, warped, src_transform=TRANSFORM, src_crs=CRS, dst_transform=transform,
              dst_crs=dst_crs, resampling=Resampling.nearest)
    other = write_tif(tmp_path / "mercator.tif", warped, crs=dst_crs, transform=transform)
    with pytest.raises(DataError, match="mercator.tif.*not on the image grid.*reproject_labels: true"):
        _ = dm_for(demo["scene"], other).source
    dm = dm_for(demo["scene"], other, reproject_labels=True)
    mask = dm.source.label.read(Window(-10, -10, 140, 100))
    assert set(np.unique(mask).tolist()) <= {0, 1, 2, 255}
    assert (mask[:10] == 255).all() and (mask[:, 110:] == 255).all()  # outside the scene


def test_ungeoreferenced_label_mask_of_the_image_size_is_assumed_on_the_grid(tmp_path, demo, caplog):
    plain = write_tif(tmp_path / "mask.tif", demo["codes"], crs=None, transform=None)
    with rasterio.open(plain) as ds:
        assert ds.crs is None and ds.transform.is_identity  # as annotation tools write it
    for reproject_labels in (False, True):  # the advice to reproject must not crash either
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            dm = dm_for(demo["scene"], plain, reproject_labels=reproject_labels)
            mask = dm.source.label.read(Window(0, 0, 100, 70))
        assert "mask.tif' has no georeferencing" in caplog.text and "assumed to lie on the image grid" in caplog.text
        assert dm.label_warnings and "assumed" in dm.label_warnings[0]
        codes = demo["codes"][0].astype(int)
        assert np.array_equal(mask, np.where(np.isin(codes, [1, 2, 3]), codes - 1, 255))
    # A real mismatch is still refused, with advice that fits (not reproject_labels).
    small = write_tif(tmp_path / "small.tif", demo["codes"][:, :64, :64], crs=None, transform=None)
    for reproject_labels in (False, True):
        with pytest.raises(DataError, match=r"small.tif' has no georeferencing.*64x64.*100x70.*image's size"):
            _ = dm_for(demo["scene"], small, reproject_labels=reproject_labels).source


# ---- item 6a: band roles only from explicit evidence ---------------------------------------
@pytest.fixture
def eight_bands(tmp_path, demo) -> Path:
    """An 8-band uint16 file without descriptions: bands 4 and 8 are not red and NIR here."""
    img = demo["image"]
    data = np.concatenate([img, img[::-1]])  # blue green red nir nir red green blue
    return write_tif(tmp_path / "eight.tif", data)


def test_undescribed_bands_get_no_roles_and_an_index_needs_band_roles(eight_bands, demo):
    with pytest.raises(DataError, match=r"index NDVI needs the nir, red band\(s\).*never guessed.*band_roles"):
        _ = dm_for(eight_bands, demo["labels"], indices=["NDVI"]).in_chans


def test_roles_from_sensor_or_band_roles_are_logged_and_stored(eight_bands, demo, caplog):
    with caplog.at_level(logging.INFO, logger="domains.agriculture"):
        dm = dm_for(eight_bands, demo["labels"], indices=["NDVI"], sensor="sentinel2")
        contract = contract_of(dm)
    assert "red=B4, nir=B8" in caplog.text and "sentinel2" in caplog.text
    assert contract.band_roles["red"] == "B4" and contract.band_roles["nir"] == "B8"
    assert contract.sensor == "sentinel2" and "sentinel2" in contract.band_roles_source
    # Explicit roles (here the right ones for this file) win; the bundle uses the stored ones.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="domains.agriculture"):
        dm = dm_for(eight_bands, demo["labels"], indices=["NDVI"], band_roles={"red": "B3", "nir": "B4"})
        contract = contract_of(dm)
    assert contract.band_roles == {"red": "B3", "nir": "B4"} and "red=B3, nir=B4 (from band_roles)" in caplog.text
    spec = BandSpec.from_contract(contract)
    stack = spec.open(str(eight_bands))
    image, _ = spec.read(stack, Window(10, 10, 4, 4))
    nir, red = demo["image"][3, 10:14, 10:14].astype(float), demo["image"][2, 10:14, 10:14].astype(float)
    assert np.allclose(image[..., -1], (nir - red) / (nir + red))


def test_described_role_names_still_work(demo):
    dm = dm_for(demo["scene"], demo["labels"], indices=["NDVI"])  # descriptions blue..nir
    assert dm.channel_names[-1] == "NDVI" and contract_of(dm).band_roles == {
        "blue": "blue", "green": "green", "red": "red", "nir": "nir"}


# ---- item 6a: pretrained RGB stem filters follow band roles, never band numbers -------------
@pytest.fixture
def rgb_weights(tmp_path) -> tuple[Path, torch.Tensor]:
    """A TINY ConvNeXt saved as a local "pretrained" RGB weights file, and its stem filters."""
    source = ConvNeXtBackbone(**TINY, in_chans=3)
    path = tmp_path / "rgb.safetensors"
    save_file({k: v.contiguous() for k, v in source.model.state_dict().items()}, str(path))
    return path, source.model.state_dict()["stem.0.weight"]


@pytest.fixture
def landsat7(tmp_path, demo) -> Path:
    """Landsat 7 bands 1, 2, 3, 4, 5, 7 (blue green red nir swir1 swir2) as other tools write
    them: no descriptions, so they are named B1..B6 by position, and B4 is NIR, not red."""
    img = demo["image"]
    return write_tif(tmp_path / "landsat7.tif", np.concatenate([img, img[3:4] // 2, img[3:4] // 3]))


def stem_of(dm: SceneSegmentationDataModule, weights_file: Path) -> torch.Tensor:
    """Stem filters of a task fine-tuned from ``weights_file``, given the datamodule's channel
    names as the CLI links them into the model."""
    task = SceneSegmentationTask(**TINY, in_chans=dm.in_chans, num_classes=3, decoder_channels=8,
                                 channel_names=dm.channel_names, pretrained=str(weights_file))
    return task.backbone.model.stem[0].weight.detach()


def expected_stem(rgb: torch.Tensor, channels: list[int | None]) -> torch.Tensor:
    """Per channel the source's red (0), green (1) or blue (2) filter, or the mean filter
    (None), scaled by 3 / in_chans as core.weights.adapt_stem does."""
    filters = [rgb[:, i] if i is not None else rgb.mean(dim=1) for i in channels]
    return torch.stack(filters, dim=1) * (3 / len(channels))


def test_undescribed_landsat7_file_gives_b4_no_red_filter(landsat7, demo, rgb_weights):
    path, rgb = rgb_weights
    dm = dm_for(landsat7, demo["labels"])
    assert dm.channel_names == ["B1", "B2", "B3", "B4", "B5", "B6"]
    assert torch.allclose(stem_of(dm, path), expected_stem(rgb, [None] * 6))


@pytest.mark.parametrize("evidence", [{"sensor": "landsat7"},
                                      {"band_roles": {"red": "B3", "green": "B2", "blue": "B1"}}])
def test_sensor_or_band_roles_give_the_rgb_bands_their_filters(landsat7, demo, rgb_weights, evidence):
    path, rgb = rgb_weights
    dm = dm_for(landsat7, demo["labels"], **evidence)
    assert dm.channel_names[:4] == ["blue", "green", "red", "nir" if "sensor" in evidence else "B4"]
    assert torch.allclose(stem_of(dm, path), expected_stem(rgb, [2, 1, 0, None, None, None]))
    # The contract keeps the file's band names for selection; the bundle gets the same channels.
    contract = contract_of(dm)
    assert contract.bands == ("B1", "B2", "B3", "B4", "B5", "B6")
    assert list(contract.channel_names) == dm.channel_names
    spec = BandSpec.from_contract(contract)
    assert spec.channel_names(spec.open(str(landsat7))) == dm.channel_names


def test_sentinel2_described_bands_keep_their_rgb_filters(tmp_path, demo, rgb_weights):
    path, rgb = rgb_weights
    s2 = write_tif(tmp_path / "s2.tif", demo["image"], descriptions=["B2", "B3", "B4", "B8"])
    dm = dm_for(s2, demo["labels"], sensor="sentinel2", indices=["NDVI"])
    assert dm.channel_names == ["blue", "green", "red", "nir", "NDVI"]
    assert torch.allclose(stem_of(dm, path), expected_stem(rgb, [2, 1, 0, None, None]))
    described = dm_for(demo["scene"], demo["labels"])  # descriptions blue, green, red, nir
    assert torch.allclose(stem_of(described, path), expected_stem(rgb, [2, 1, 0, None]))
    # Band numbers without a sensor are no evidence of a role.
    numbers_only = dm_for(s2, demo["labels"])
    assert numbers_only.channel_names == ["B2", "B3", "B4", "B8"]
    assert torch.allclose(stem_of(numbers_only, path), expected_stem(rgb, [None] * 4))


def test_a_band_named_like_another_bands_role_is_an_error(demo):
    dm = dm_for(demo["scene"], demo["labels"], band_names=["red", "x", "y", "z"], band_roles={"red": "y"})
    with pytest.raises(DataError, match=r"band 'y' has the red role \(from band_roles\), but band 'red'"):
        _ = dm.channel_names


# ---- item 6b: a bundle refuses another band count ------------------------------------------
def test_bundle_trained_on_one_band_refuses_a_wider_file(tmp_path, demo):
    # With a nodata tag, so this checks the band count alone (not item 4's reads).
    pan = write_tif(tmp_path / "pan.tif", demo["image"][3:4], nodata=0)
    wide = write_tif(tmp_path / "wide.tif", demo["image"], nodata=0)  # undescribed: B1..B4
    dm = dm_for(pan, demo["labels"])
    contract = contract_of(dm)
    bundle = StubBundle(contract, dm.class_names)
    with pytest.raises(DataError, match=r"wide.tif' has 4 band\(s\).*B1 of 1-band files"):
        segment_scene(bundle, wide, tmp_path / "ort", batch_size=4)
    assert contract.bands == ("B1",) and contract.file_band_count == 1
    assert not (tmp_path / "ort").exists() or list((tmp_path / "ort").iterdir()) == []
    patch_contract = as_patch(contract)
    with pytest.raises(DataError, match=r"wide.tif' has 4 band\(s\)"):
        read_input(wide, patch_contract)
    assert read_input(pan, patch_contract)[0].shape == (70, 100, 1)


# ---- item 6c: complex rasters refused; float64 works ---------------------------------------
@pytest.mark.parametrize("dtype", ["complex64", "complex_int16"])
def test_complex_sar_rasters_are_refused(tmp_path, demo, dtype):
    data = (demo["image"][:1].astype(np.float32) + 1j * 5).astype(np.complex64)
    if dtype == "complex_int16":
        path = tmp_path / "slc.tif"
        with rasterio.open(path, "w", driver="GTiff", width=100, height=70, count=1,
                           dtype="complex_int16", crs=CRS, transform=TRANSFORM) as dst:
            dst.write(data)
    else:
        path = write_tif(tmp_path / "slc.tif", data)
    with pytest.raises(DataError, match=r"slc.tif' holds complex values.*amplitude.*dB"):
        _ = dm_for(path, demo["labels"]).source


def test_float64_scene_with_nan_nodata(tmp_path, demo):
    data = demo["image"].astype(np.float64) / 10000.0
    data[:, :5, :5] = np.nan
    path = write_tif(tmp_path / "reflectance.tif", data, nodata=float("nan"))
    dm = dm_for(path, demo["labels"], predict_image=str(path),
                predict_output=str(tmp_path / "pred" / "classes.tif"))
    image, valid = dm.source.stack.read(Window(-2, -2, 10, 10))
    assert not valid[:7, :7].any() and valid[7:, 7:].all()
    assert np.allclose(image[:, 7:, 7:], data[:, 5:8, 5:8].astype(np.float32))
    contract = contract_of(dm)
    assert all(np.isfinite(contract.mean)) and all(0 < s < 1 for s in contract.std)
    with rasterio.open(lightning_predict(dm, tmp_path)) as ds:
        classes = ds.read(1)
    assert (classes[:5, :5] == 255).all() and (classes[5:, 5:] == 0).all()


# ---- item 6d: inputs far outside the training statistics -----------------------------------
def test_inputs_far_from_training_statistics_warn_on_both_paths(tmp_path, demo, caplog):
    reflectance = write_tif(tmp_path / "sr.tif", (demo["image"] / 10000.0).astype(np.float32),
                            descriptions=["blue", "green", "red", "nir"])
    dm = dm_for(demo["scene"], demo["labels"], predict_image=str(reflectance),
                predict_output=str(tmp_path / "pred" / "classes.tif"))
    with caplog.at_level(logging.WARNING):
        out = lightning_predict(dm, tmp_path)
    assert "far outside the training statistics" in caplog.text
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert any("channel nir" in w for w in sidecar["input_warnings"])
    with rasterio.open(out) as ds:
        assert "far outside" in ds.tags()["input_warnings"]
    caplog.clear()
    bundle = StubBundle(contract_of(dm), dm.class_names)
    with caplog.at_level(logging.WARNING):
        target = segment_scene(bundle, reflectance, tmp_path / "ort", batch_size=4)
    assert "far outside the training statistics" in caplog.text
    assert json.loads(target.with_suffix(".json").read_text())["input_warnings"]
    # The training scene itself raises no warning.
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        same = segment_scene(bundle, Path(demo["scene"]), tmp_path / "same", batch_size=4)
    assert json.loads(same.with_suffix(".json").read_text())["input_warnings"] == []
    assert "far outside" not in caplog.text


# ---- item 7: a single-class mask --------------------------------------------------------------
def test_single_class_mask_is_a_clear_error_and_binary_masks_work(tmp_path, demo):
    binary = write_tif(tmp_path / "binary.tif", np.where(demo["codes"] == 2, 255, 0).astype(np.uint8))
    with pytest.raises(DataError, match=r"class_values \[255\].*background and the object classes.*\[0, 255\]"):
        dm_for(demo["scene"], binary, class_values=[255])
    dm = dm_for(demo["scene"], binary, class_values=[0, 255])
    counts = dm.source.class_pixels.sum(axis=0)
    assert counts.tolist() == [int((demo["codes"] != 2).sum()), int((demo["codes"] == 2).sum())]


def test_patches_far_from_training_statistics_or_with_other_bands(tmp_path, demo, caplog):
    from domains.agriculture import GeoTiffFolderDataModule

    dm = GeoTiffFolderDataModule(root=str(demo["patches"]), image_size=16, batch_size=2,
                                 val_fraction=0.34, test_fraction=0.0)
    contract = contract_of(dm)
    assert contract.reader == "geotiff_patch"
    with rasterio.open(next(Path(demo["patches"]).rglob("*.tif"))) as ds:
        patch = ds.read()
    sr = write_tif(tmp_path / "sr.tif", (patch / 10000.0).astype(np.float32),
                   descriptions=["blue", "green", "red", "nir"])
    with caplog.at_level(logging.WARNING):
        dm.predict_source([sr]).read_image(0)  # Lightning predict path
    assert "sr.tif" in caplog.text and "far outside the training statistics" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        read_input(sr, contract)  # bundle path
    assert "sr.tif" in caplog.text and "far outside the training statistics" in caplog.text
    three = write_tif(tmp_path / "three.tif", patch[:3], descriptions=["blue", "green", "red"])
    with pytest.raises(DataError, match=r"three.tif' has 3 band\(s\).*training patches have blue, green, red, nir"):
        dm.predict_source([three])


def test_rgba_orthomosaic_alpha_marks_valid_pixels_and_is_not_a_channel(tmp_path, demo, caplog):
    rgb = (demo["image"][[2, 1, 0]] / 10000 * 255).clip(0, 255).astype(np.uint8)
    alpha = np.full((1, 70, 100), 255, dtype=np.uint8)
    alpha[0, :, :10] = 0  # transparent strip, as drone mosaics have around the flight
    path = tmp_path / "rgba.tif"
    with rasterio.open(path, "w", driver="GTiff", width=100, height=70, count=4, dtype="uint8",
                       crs=CRS, transform=TRANSFORM, photometric="RGB", alpha="YES") as dst:
        dst.write(np.concatenate([rgb, alpha]))
    with caplog.at_level(logging.INFO, logger="domains.agriculture"):
        dm = dm_for(path, demo["labels"])
        image, valid = dm.source.stack.read(Window(0, 0, 32, 32))
    assert dm.source.stack.names == ["B1", "B2", "B3"] and "alpha band" in caplog.text
    assert not valid[:, :10].any() and valid[:, 10:].all() and np.isnan(image[:, :, :10]).all()


# ---- labelled pixels on one band's nodata (NC Landsat: band 7 has a nodata area) ----------------
def per_band_scene(tmp_path: Path, dead_cols: int) -> tuple[list[str], Path]:
    """Three single-band files as Landsat ships them; band 3 alone is nodata (-9999, tagged) in
    its first ``dead_cols`` columns. Dense labels: class 2 in columns 0-15, class 1 elsewhere."""
    rng = np.random.default_rng(0)
    bands = []
    for b in range(3):
        data = rng.uniform(100, 200, (1, 64, 64)).astype(np.float32)
        if b == 2:
            data[:, :, :dead_cols] = -9999
        bands.append(str(write_tif(tmp_path / f"B{b + 1}.tif", data, nodata=-9999.0)))
    codes = np.ones((1, 64, 64), dtype=np.uint8)
    codes[:, :, :16] = 2
    return bands, write_tif(tmp_path / "labels.tif", codes)


def scene_bands_dm(bands: list[str], labels: Path) -> SceneSegmentationDataModule:
    return SceneSegmentationDataModule(image=bands, labels=str(labels), class_values=[1, 2], tile_size=32,
                                       block_size=32, batch_size=4, val_fraction=0.25, test_fraction=0.25)


def test_labelled_pixels_on_nodata_are_not_counted(tmp_path, caplog):
    bands, labels = per_band_scene(tmp_path, dead_cols=10)
    with caplog.at_level(logging.WARNING):
        dm = scene_bands_dm(bands, labels)
        source = dm.source
    # By hand: 64 rows x 10 dead columns of class 2 are never trained on or scored.
    assert source.class_pixels.sum(axis=0).tolist() == [64 * 48, 64 * 6]
    assert source.labelled_on_nodata == 640
    assert "640 labelled pixel(s) lie where a band is nodata" in caplog.text
    # The counts agree with the masks the network is trained and scored on.
    from_masks = np.zeros(2, dtype=np.int64)
    for i in range(len(source)):
        mask = source.read(i)["mask"]
        from_masks += np.bincount(mask[mask != 255], minlength=2)[:2]
    assert from_masks.tolist() == source.class_pixels.sum(axis=0).tolist()
    # The training split's counts (class weights, oversampling) use the same rule.
    train = dm.train_class_counts()
    expected = np.zeros(2, dtype=np.int64)
    for i in dm.train_indices:
        mask = source.read(int(i))["mask"]
        expected += np.bincount(mask[mask != 255], minlength=2)[:2]
    assert train == expected.tolist()


def test_labels_only_on_nodata_is_a_clear_error(tmp_path):
    bands, labels = per_band_scene(tmp_path, dead_cols=64)
    with pytest.raises(DataError, match=r"every labelled pixel of '.*labels.tif' \(4096\) lies where a band"):
        _ = scene_bands_dm(bands, labels).source


# ---- patch folders with the usual mess: edge tiles of nodata, odd bands, broken files --------------
def messy_patch_folder(tmp_path: Path) -> Path:
    """A EuroSAT-like folder as scene-tiling tools leave it: 5 good 4-band uint16 patches per class
    (nodata 0 tagged), plus in ``forest`` an edge tile that is all nodata, in ``water`` a float32
    tile of NaNs without a nodata tag, a 3-band patch and a file that is not a TIFF."""
    rng = np.random.default_rng(1)
    root = tmp_path / "patches"
    for c, cls in enumerate(("forest", "water")):
        (root / cls).mkdir(parents=True)
        for i in range(5):
            data = rng.integers(100 + 500 * c, 600 + 500 * c, (4, 16, 16)).astype(np.uint16)
            write_tif(root / cls / f"{cls}_{i}.tif", data, nodata=0)
    write_tif(root / "forest" / "edge_tile.tif", np.zeros((4, 16, 16), np.uint16), nodata=0)
    write_tif(root / "water" / "nan_tile.tif", np.full((4, 16, 16), np.nan, np.float32))
    write_tif(root / "water" / "rgb_only.tif", rng.integers(1, 255, (3, 16, 16)).astype(np.uint16))
    (root / "water" / "broken.tif").write_bytes(b"not a tiff at all")
    return root


def test_patch_folder_bad_patches_error_names_each_or_are_skipped_and_reported(tmp_path, caplog):
    from domains.agriculture import GeoTiffFolderDataModule

    root = messy_patch_folder(tmp_path)
    args = dict(root=str(root), image_size=16, batch_size=2, val_fraction=0.2, test_fraction=0.2)
    with pytest.raises(DataError) as err:
        _ = GeoTiffFolderDataModule(**args).source
    message = str(err.value)
    assert message.startswith("4 unreadable GeoTIFF files; replace or delete them, or set "
                              "data.init_args.on_bad_file: skip")
    for name, why in (("edge_tile.tif", "no valid pixel"), ("nan_tile.tif", "no valid pixel"),
                      ("rgb_only.tif", "3 band(s)"), ("broken.tif", "cannot open raster")):
        assert any(name in line and why in line for line in message.splitlines()), (name, message)

    with caplog.at_level(logging.WARNING):
        dm = GeoTiffFolderDataModule(**args, on_bad_file="skip")
        source = dm.source
    assert "skipped 4 unreadable GeoTIFF file(s)" in caplog.text
    assert sorted(Path(p).name for p, _ in dm.skipped) == ["broken.tif", "edge_tile.tif", "nan_tile.tif",
                                                            "rgb_only.tif"]
    # The 10 good patches stay, each with the class of its own folder.
    assert len(source) == 10
    for path, label in zip(source.paths, source.labels, strict=True):
        assert source.class_names[label] == Path(path).parent.name
    dm.setup("fit")
    dm.ensure_stats()
    assert np.isfinite(np.asarray(dm.mean, dtype=float)).all()

    # Files to predict on pass the same check against the training bands.
    good = root / "forest" / "forest_0.tif"
    predict = dm.predict_source([good, root / "forest" / "edge_tile.tif", root / "water" / "rgb_only.tif"])
    assert [Path(p).name for p in predict.paths] == ["forest_0.tif"]
    strict = GeoTiffFolderDataModule(**args, on_bad_file="skip")
    strict.hparams.on_bad_file = "error"
    strict._source = source
    with pytest.raises(DataError, match=r"edge_tile.tif' has no valid pixel.*on_bad_file: skip"):
        strict.predict_source([good, root / "forest" / "edge_tile.tif"])
