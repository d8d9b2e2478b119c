"""Medical domain: DICOM manifests, patient-level splits, bad files, privacy, segmentation."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer

from core.cli import run_cli
from core.data import DataError
from core.segmentation_metrics import HausdorffDistance95
from domains.medical import DicomDataModule, DicomSegmentationDataModule
from domains.medical.masks import read_mask

from .conftest import TINY, TINY_ARGS
from .dicom_helpers import (
    make_ct_study,
    patient_identity,
    write_dicom,
    write_seg_vendor,
    write_series,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def study(tmp_path):
    return make_ct_study(tmp_path / "study", n_patients=10, per_patient=3)


def patients_of(dm, split):
    return {Path(dm.source.paths[i]).stem.split("_")[0] for i in dm.splits[split]}


def test_patient_level_split_is_disjoint_and_seeded(study):
    dm = DicomDataModule(manifest=str(study["labels"]), window="abdomen", val_fraction=0.2,
                         test_fraction=0.2, image_size=32)
    assert dm.class_names == ["contrast", "plain"] and dm.in_chans == 1
    dm.setup("fit")
    owners = {s: patients_of(dm, s) for s in ("train", "val", "test")}
    assert not owners["train"] & owners["val"] and not owners["train"] & owners["test"]
    assert not owners["val"] & owners["test"]
    assert sum(len(v) for v in owners.values()) == 10  # every patient in exactly one split
    again = DicomDataModule(manifest=str(study["labels"]), window="abdomen", val_fraction=0.2,
                            test_fraction=0.2)
    again.setup("fit")
    assert all(np.array_equal(dm.splits[s], again.splits[s]) for s in dm.splits)
    # Three windows stack into three channels.
    assert DicomDataModule(manifest=str(study["labels"]), window=["lung", "mediastinum", "bone"]).in_chans == 3


def test_patients_from_headers_with_class_folders(tmp_path, study):
    for row in list(csv.DictReader(study["labels"].open())):
        target = tmp_path / "folders" / row["label"] / Path(row["path"]).name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((study["labels"].parent / row["path"]).read_bytes())
    dm = DicomDataModule(root=str(tmp_path / "folders"), val_fraction=0.2, test_fraction=0.2)
    dm.setup("fit")
    owners = {s: patients_of(dm, s) for s in ("train", "val", "test")}
    assert not owners["train"] & owners["test"] and not owners["val"] & owners["test"]
    assert len(set(dm.groups())) == 10
    assert not any("ZZPID" in g for g in dm.groups())  # hashed, never the PatientID itself


def test_multilabel_manifest(tmp_path, study):
    rows = list(csv.DictReader(study["labels"].open()))
    lines = ["path,contrast,artifact,patient_id"]
    for k, r in enumerate(rows):
        lines.append(f"{r['path']},{int(r['label'] == 'contrast')},{k % 2},{r['patient_id']}")
    (study["labels"].parent / "multi.csv").write_text("\n".join(lines))
    dm = DicomDataModule(manifest=str(study["labels"].parent / "multi.csv"),
                         label_columns=["contrast", "artifact"])
    assert dm.multilabel and dm.class_names == ["contrast", "artifact"]
    assert dm.source.labels.shape == (30, 2)


def bad_files(study):
    folder = study["slices"]
    (folder / "notes.dcm").write_text("this is not DICOM")
    write_dicom(folder / "nopixels.dcm", np.zeros((4, 4), np.uint16), PatientID="ZZPID99999")
    import pydicom

    ds = pydicom.dcmread(folder / "nopixels.dcm")
    del ds.PixelData
    ds.save_as(folder / "nopixels.dcm")
    good = (folder / "p0_0.dcm").read_bytes()
    (folder / "truncated.dcm").write_bytes(good[: len(good) - 900])
    rows = study["labels"].read_text().splitlines()
    rows += ["slices/notes.dcm,plain,X1", "slices/nopixels.dcm,plain,X2",
             "slices/truncated.dcm,plain,X3", "slices/missing.dcm,plain,X4"]
    study["labels"].write_text("\n".join(rows) + "\n")
    return ["notes.dcm", "nopixels.dcm", "truncated.dcm", "missing.dcm"]


def test_bad_files_stop_with_the_path_or_are_skipped_and_reported(study, tmp_path):
    names = bad_files(study)
    with pytest.raises(DataError, match="missing.dcm.*does not exist.*on_bad_file: skip"):
        _ = DicomDataModule(manifest=str(study["labels"])).source
    full = study["labels"].read_text()
    study["labels"].write_text(full.replace("slices/missing.dcm,plain,X4\n", ""))
    dm = DicomDataModule(manifest=str(study["labels"]))
    with pytest.raises(DataError, match="notes.dcm.*not a DICOM file"):
        for i in range(len(dm.source)):
            dm.source.read(i)
    study["labels"].write_text(full)
    skipping = DicomDataModule(manifest=str(study["labels"]), on_bad_file="skip", image_size=32,
                               batch_size=8, val_fraction=0.2, test_fraction=0.2)
    assert len(skipping.source) == 30
    assert sorted(Path(p).name for p, _ in skipping.skipped) == sorted(names)
    reasons = dict((Path(p).name, r) for p, r in skipping.skipped)
    assert "not a DICOM file" in reasons["notes.dcm"]
    assert "no pixel data" in reasons["nopixels.dcm"].lower()
    assert "ZZPID99999" not in reasons["nopixels.dcm"]
    from domains.medical import MedicalClassificationTask

    task = MedicalClassificationTask(**TINY, in_chans=1, num_classes=2, class_names=skipping.class_names)
    trainer = Trainer(accelerator="cpu", max_epochs=1, logger=True, enable_progress_bar=False,
                      default_root_dir=tmp_path)
    trainer.fit(task, datamodule=skipping)
    report = list(csv.DictReader((Path(trainer.log_dir) / "skipped_files.csv").open()))
    assert sorted(Path(r["path"]).name for r in report) == sorted(names)


def test_privacy_no_identifier_in_any_written_file(study, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad_files(study)
    config = ROOT / "configs" / "medical" / "classification.yaml"
    base = ["--config", str(config), *TINY_ARGS, f"--data.init_args.manifest={study['labels']}",
            "--data.init_args.image_size=32", "--data.init_args.batch_size=8",
            "--data.init_args.num_workers=0", "--data.init_args.val_fraction=0.3",
            "--data.init_args.test_fraction=0.3", f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}"]
    fit = run_cli(["fit", *base, "--trainer.max_epochs=2"])
    best = fit.trainer.checkpoint_callback.best_model_path
    test = run_cli(["test", *base, f"--ckpt_path={best}"])
    pred = run_cli(["predict", *base, f"--ckpt_path={best}",
                    f"--data.init_args.predict_paths=[{study['slices']}]",
                    "--data.init_args.id_field=sop_instance_uid"])
    metrics = json.loads((Path(test.trainer.log_dir) / "metrics.json").read_text())["metrics"]
    assert {"auroc", "op_sensitivity", "op_specificity", "ap_contrast"} <= set(metrics)
    rows = list(csv.DictReader((Path(pred.trainer.log_dir) / "predictions.csv").open()))
    assert rows and rows[0]["id"].startswith("1.2.826.0.1.3680043.2.1125.")  # SOPInstanceUIDs

    written = [p for p in (tmp_path / "runs").rglob("*") if p.is_file()]
    assert any(p.suffix == ".ckpt" for p in written) and any(p.name == "metrics.csv" for p in written)
    identifiers = set()
    for i in list(range(10)) + [99999]:
        who = patient_identity(i)
        identifiers |= {who["PatientName"], who["PatientName"].replace("^", " "), who["PatientID"],
                        who["PatientBirthDate"], who["AccessionNumber"], "Zelda"}
    identifiers.add("ZZPID99999")
    for path in written:
        data = path.read_bytes()
        for ident in identifiers:
            assert ident.encode() not in data, f"{ident} found in {path}"


def test_masks_png_npy_and_dicom_seg(tmp_path):
    from PIL import Image

    from domains.medical.masks import source_image

    raw = np.zeros((6, 5), np.uint8)
    raw[1:3, 1:4] = 255
    Image.fromarray(raw).save(tmp_path / "m.png")
    np.save(tmp_path / "m.npy", (raw > 0).astype(np.int16) * 7)
    assert read_mask(tmp_path / "m.png").tolist() == (raw > 0).astype(int).tolist()
    assert read_mask(tmp_path / "m.npy", mask_values=[7]).sum() == 6
    image = write_series(tmp_path / "ct", [np.zeros((6, 5), np.uint16)])[0]
    seg = write_seg_vendor(tmp_path / "seg.dcm", image, [(1, None, raw > 0), (2, None, np.eye(6, 5, dtype=bool))], 2)
    with pytest.raises(DataError, match="overlap"):  # the diagonal crosses segment 1 at (1,1), (2,2)
        read_mask(seg, mask_values=[1, 2], source=source_image(image))
    labels = read_mask(seg, mask_values=[1, 2], source=source_image(image), segment_overlap="first_listed")
    assert labels[1, 2] == 1 and labels[1, 1] == 1 and labels[0, 0] == 2 and labels[5, 0] == 0
    assert read_mask(seg, source=source_image(image)).max() == 1  # default: one foreground class
    (tmp_path / "bad.png").write_bytes(b"nope")
    with pytest.raises(DataError, match="bad.png"):
        read_mask(tmp_path / "bad.png")


def test_segmentation_reports_dice_iou_and_hd95(study, tmp_path):
    from domains.medical import MedicalSegmentationTask

    dm = DicomSegmentationDataModule(manifest=str(study["masks"]), window="abdomen", image_size=32,
                                     batch_size=6, val_fraction=0.2, test_fraction=0.3,
                                     augment="flips", foreground_names=["blob"])
    assert dm.class_names == ["background", "blob"] and dm.num_classes == 2
    dm.setup("fit")
    owners = {s: patients_of(dm, s) for s in ("train", "val", "test")}
    assert not owners["train"] & owners["test"]
    task = MedicalSegmentationTask(**TINY, in_chans=1, num_classes=2, class_names=dm.class_names,
                                   decoder_channels=8, loss="ce+dice", lr=3e-3, pixel_spacing=[0.8, 0.8])
    trainer = Trainer(accelerator="cpu", max_epochs=3, logger=True, enable_progress_bar=False,
                      default_root_dir=tmp_path)
    trainer.fit(task, datamodule=dm)
    result = trainer.test(task, datamodule=dm)[0]
    assert 0.0 <= result["test/dice"] <= 1.0 and 0.0 <= result["test/miou"] <= 1.0
    report = json.loads((Path(trainer.log_dir) / "metrics.json").read_text())
    assert {"dice", "hd95", "miou", "iou_blob"} <= set(report["metrics"])


def test_hd95_in_millimetres():
    target = torch.zeros(1, 24, 24, dtype=torch.long)
    target[0, 6:18, 6:18] = 1
    shifted = torch.zeros_like(target)
    shifted[0, 6:18, 9:21] = 1  # 3 pixels to the right
    metric = HausdorffDistance95(2, spacing=[0.5, 0.5])
    metric.update(shifted, target)
    assert float(metric.compute()) == pytest.approx(1.5)
    empty = HausdorffDistance95(2)
    empty.update(torch.zeros_like(target), target)  # nothing predicted: no finite distance
    assert torch.isnan(empty.compute()) and int(empty.missed) == 1


def test_every_frame_of_a_multiframe_file_can_be_a_sample(tmp_path):
    lines = ["path,label,patient_id"]
    for i in range(4):
        frames = np.stack([np.full((8, 8), 20 * k + i, dtype=np.uint8) for k in range(3)])
        write_dicom(tmp_path / f"cine{i}.dcm", frames, modality="OT")
        lines.append(f"cine{i}.dcm,{'a' if i % 2 else 'b'},P{i}")
    (tmp_path / "m.csv").write_text("\n".join(lines))
    dm = DicomDataModule(manifest=str(tmp_path / "m.csv"), frames="all", val_fraction=0.25,
                         test_fraction=0.25, image_size=8)
    assert len(dm.source) == 12  # 4 files x 3 frames
    assert dm.source.ids[1].endswith("cine0.dcm#frame1")
    assert dm.source.read_image(1)[0, 0, 0] == 20
    dm.setup("fit")
    owners = {s: {Path(dm.source.paths[i]).name for i in idx} for s, idx in dm.splits.items()}
    assert not owners["train"] & owners["test"]  # all frames of a patient's file stay together
    middle = DicomDataModule(manifest=str(tmp_path / "m.csv"))
    assert len(middle.source) == 4 and middle.source.read_image(0)[0, 0, 0] == 20
