"""The medical configs run: one fast_dev_run step each on a tiny synthetic CT study."""

from __future__ import annotations

import pytest

from .config_runs import assert_one_linked_step, config_id, domain_configs, fast_dev_run
from .dicom_helpers import make_ct_study

CONFIGS = domain_configs("medical")


def dicom_labels(tmp_path, monkeypatch) -> list[str]:
    """A manifest of DICOM images with one label each, 8 patients."""
    study = make_ct_study(tmp_path / "study", n_patients=8, per_patient=2)
    return [f"--data.init_args.manifest={study['labels']}", "--data.init_args.val_fraction=0.25",
            "--data.init_args.test_fraction=0.25"]


def dicom_masks(tmp_path, monkeypatch) -> list[str]:
    """A manifest of DICOM images with a mask each, 8 patients."""
    study = make_ct_study(tmp_path / "study", n_patients=8, per_patient=2)
    return [f"--data.init_args.manifest={study['masks']}", "--model.init_args.decoder_channels=16",
            "--data.init_args.val_fraction=0.25", "--data.init_args.test_fraction=0.25"]


# Per datamodule of configs/medical/: how to give it tiny synthetic data.
def dicom_boxes(tmp_path, monkeypatch) -> list[str]:
    from .test_medical_detection import dicom_box_data

    return dicom_box_data(tmp_path, monkeypatch)


SYNTHETIC_DATA = {"DicomDataModule": dicom_labels, "DicomSegmentationDataModule": dicom_masks,
                  "DicomDetectionDataModule": dicom_boxes}


def test_the_domain_has_configs():
    assert CONFIGS, "configs/medical/ holds no YAML"


@pytest.mark.parametrize("config", CONFIGS, ids=[config_id(c) for c in CONFIGS])
def test_config_runs_fast_dev_run(config, tmp_path, monkeypatch):
    assert_one_linked_step(fast_dev_run(config, tmp_path, monkeypatch))
