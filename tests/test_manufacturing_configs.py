"""The manufacturing configs run: one fast_dev_run step each on tiny synthetic defect images."""

from __future__ import annotations

import numpy as np
import pytest

from domains.manufacturing import elpv as elpv_module

from .config_runs import assert_one_linked_step, config_id, domain_configs, fast_dev_run
from .conftest import make_defect_folders, write_defect_image

CONFIGS = domain_configs("manufacturing")


def elpv_data(tmp_path, monkeypatch) -> list[str]:
    """40 synthetic EL cells standing in for the ELPV download (4 defect probabilities)."""
    rng = np.random.default_rng(0)
    probs = np.array([0.0, 1 / 3, 2 / 3, 1.0] * 10)
    paths = []
    for i, p in enumerate(probs):
        paths.append(tmp_path / "elpv" / f"cell{i:04d}.png")
        write_defect_image(paths[-1], p >= 0.5, rng, size=40)
    monkeypatch.setattr(elpv_module, "elpv_records", lambda: (paths, probs, ["mono"] * 40))
    return []


def folder_data(tmp_path, monkeypatch) -> list[str]:
    """One folder per class of synthetic defect tiles."""
    return [f"--data.init_args.root={make_defect_folders(tmp_path / 'defects', per_class=8)}"]


def defect_mask_data(tmp_path, monkeypatch) -> list[str]:
    """Magnetic-tile-like defect folders with masks beside the images, and a good folder."""
    from .test_manufacturing_detection import magnetic_tile_layout

    return [f"--data.init_args.root={magnetic_tile_layout(tmp_path / 'tiles', per_class=6)}",
            "--data.init_args.good_class=MT_Free"]


# Per datamodule of configs/manufacturing/: how to give it tiny synthetic data.
SYNTHETIC_DATA = {"ELPVDataModule": elpv_data, "DefectFolderDataModule": folder_data,
                  "DefectDetectionDataModule": defect_mask_data}


def test_the_domain_has_configs():
    assert CONFIGS, "configs/manufacturing/ holds no YAML"


@pytest.mark.parametrize("config", CONFIGS, ids=[config_id(c) for c in CONFIGS])
def test_config_runs_fast_dev_run(config, tmp_path, monkeypatch):
    assert_one_linked_step(fast_dev_run(config, tmp_path, monkeypatch))
