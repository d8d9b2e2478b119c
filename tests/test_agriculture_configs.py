"""The agriculture configs run: one fast_dev_run step each on a tiny synthetic GeoTIFF scene."""

from __future__ import annotations

import pytest

from domains.agriculture.synthetic import write_demo_scene

from .config_runs import assert_one_linked_step, config_id, domain_configs, fast_dev_run
from .test_agriculture_detection import detection_scene_data

CONFIGS = domain_configs("agriculture")


def _scene(tmp_path) -> dict:
    return write_demo_scene(tmp_path / "agri", 96, 96, sparse=0.2, patches_per_class=4, patch=16)


def scene_data(tmp_path, monkeypatch) -> list[str]:
    """A 96x96 four-band scene with sparse labels, cut into 32-pixel tiles."""
    p = _scene(tmp_path)
    return [f"--data.init_args.image={p['scene']}", f"--data.init_args.labels={p['labels']}",
            "--data.init_args.tile_size=32", "--data.init_args.block_size=32",
            "--data.init_args.samples_per_epoch=4", "--model.init_args.decoder_channels=16"]


def patch_data(tmp_path, monkeypatch) -> list[str]:
    """Patches of the synthetic scene, one folder per class."""
    return [f"--data.init_args.root={_scene(tmp_path)['patches']}"]


# Per datamodule of configs/agriculture/: how to give it tiny synthetic data.
SYNTHETIC_DATA = {"SceneSegmentationDataModule": scene_data, "GeoTiffFolderDataModule": patch_data,
                  "SceneDetectionDataModule": detection_scene_data}


def test_the_domain_has_configs():
    assert CONFIGS, "configs/agriculture/ holds no YAML"


@pytest.mark.parametrize("config", CONFIGS, ids=[config_id(c) for c in CONFIGS])
def test_config_runs_fast_dev_run(config, tmp_path, monkeypatch):
    assert_one_linked_step(fast_dev_run(config, tmp_path, monkeypatch))
