"""End-to-end checks on the small real data sets in ../shared/realdata (skipped when absent)."""

import math

import pytest
from lightning.pytorch import Trainer

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
    task = DefectClassificationTask(**TINY, in_chans=dm.in_chans, num_classes=dm.num_classes,
                                    class_names=dm.class_names, lr=2e-3, class_weights="balanced")
    trainer = Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=8, logger=True,
                      enable_progress_bar=False, default_root_dir=tmp_path)
    trainer.fit(task, datamodule=dm)
    results = trainer.test(task, datamodule=dm)[0]
    assert 0.0 <= results["test/acc"] <= 1.0
    assert math.isfinite(results["test/loss"])
    assert 0.0 < float(task.threshold) <= 1.0  # an operating point was placed on validation
    assert results["test/op_defect_recall"] >= 0.0
    assert (tmp_path / "lightning_logs" / "version_0" / "metrics.json").is_file()
