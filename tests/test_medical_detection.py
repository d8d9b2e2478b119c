"""Medical detection: a CSV box manifest over DICOM images (vendor-style files, MONOCHROME1,
rescale slope/intercept, non-square and multi-frame), patient-level splits, bad rows, the
per-patient sensitivity, and fit/test/predict through the CLI without identifiers in outputs."""

from __future__ import annotations

import csv
import io
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from core.cli import run_cli
from core.data import collate_samples
from core.detection_data import DetectionDataset, EvalDetectionTransform
from core.errors import DataError
from domains.medical.detection import DicomDetectionDataModule
from domains.medical.detection_task import MedicalDetectionTask, patient_sensitivity

from .conftest import TINY, TINY_ARGS
from .dicom_helpers import patient_identity, write_dicom

ROOT = Path(__file__).resolve().parents[1]
ROWS, COLS = 48, 64  # stored image size: non-square on purpose
UID = "1.2.826.0.1.3680043.2.1135"


def lesion_slice(path: Path, boxes, patient: int, k: int, inverted: bool, frames: int = 1,
                 box_frame: int = 0) -> Path:
    """A CT-like slice (or a multi-frame file) with a bright rectangle per box (xyxy, stored
    pixels). MONOCHROME1 files store brightness inverted, as some X-ray vendors do; every file
    has a rescale slope/intercept, the patient's identifiers and no identifier in its name."""
    rng = np.random.default_rng(patient * 10 + k)
    hu = rng.normal(0, 10, (frames, ROWS, COLS))
    for x0, y0, x1, y1 in boxes:
        hu[box_frame, y0:y1, x0:x1] = 400
    # stored = (HU - intercept) / slope with slope 2, intercept -1024 (the modality LUT undoes it)
    stored = (hu + 1024) / 2
    if inverted:
        stored = 4095 - stored
    pixels = np.clip(np.rint(stored), 0, 4095).astype(np.uint16)
    extra = {"NumberOfFrames": frames} if frames > 1 else {}
    return write_dicom(path, pixels if frames > 1 else pixels[0],
                       photometric="MONOCHROME1" if inverted else "MONOCHROME2", bits_stored=12,
                       RescaleSlope=2, RescaleIntercept=-1024, PixelSpacing=[0.7, 0.7],
                       SOPInstanceUID=f"{UID}.{patient}.{k}", StudyInstanceUID=f"{UID}.9.{patient}",
                       SeriesInstanceUID=f"{UID}.8.{patient}", **extra, **patient_identity(patient))


# Boxes (x0, y0, x1, y1) of slice k of patient p; patients 4 and 5 have none (negatives only).
def boxes_of(patient: int, k: int) -> list[tuple[int, int, int, int]]:
    if patient >= 4:
        return []
    x, y = 6 + 8 * k + patient, 5 + 4 * patient
    found = [(x, y, x + 12, y + 10)]
    if k == 1:
        found.append((40, 30, 56, 44))
    return found


def label_of(patient: int, box_index: int) -> str:
    return "nodule" if box_index == 0 else "mass"


def box_study(root: Path, patients: int = 6, per_patient: int = 2) -> Path:
    """``root/boxes.csv`` over ``root/slices/*.dcm``: one row per box, a row with empty box and
    label per negative slice, patient keys = the PatientIDs (as hospitals export them)."""
    (root / "slices").mkdir(parents=True, exist_ok=True)
    lines = ["path,x0,y0,x1,y1,label,patient_id"]
    for p in range(patients):
        pid = patient_identity(p)["PatientID"]
        for k in range(per_patient):
            name = f"slices/s{p}_{k}.dcm"
            boxes = boxes_of(p, k)
            lesion_slice(root / name, boxes, p, k, inverted=(p + k) % 2 == 1)
            if not boxes:
                lines.append(f"{name},,,,,,{pid}")
            for b, box in enumerate(boxes):
                lines.append(f"{name},{','.join(map(str, box))},{label_of(p, b)},{pid}")
    (root / "boxes.csv").write_text("\n".join(lines) + "\n")
    return root / "boxes.csv"


def read_csv(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


def dicom_box_data(tmp_path, monkeypatch) -> list[str]:
    """CLI arguments for a tiny box study (for the configs' fast_dev_run)."""
    return [f"--data.init_args.manifest={box_study(tmp_path / 'study')}",
            "--data.init_args.val_fraction=0.34", "--data.init_args.test_fraction=0.34"]


def module(manifest: Path, **kwargs) -> DicomDetectionDataModule:
    args = {"image_size": [32, 32], "val_fraction": 0.34, "test_fraction": 0.34, "batch_size": 4} | kwargs
    return DicomDetectionDataModule(manifest=str(manifest), **args)


# ---- boxes, negatives, splits ----------------------------------------------------------------
def test_boxes_in_the_batch_are_the_manifest_boxes_scaled_to_the_network(tmp_path):
    manifest = box_study(tmp_path)
    dm = module(manifest)
    assert dm.class_names == ["mass", "nodule"] and dm.num_classes == 2 and dm.in_chans == 1
    assert len(dm.source) == 12
    dm.ensure_stats()
    data = DetectionDataset(dm.source, np.arange(12), EvalDetectionTransform([32, 32], dm.mean, dm.std))
    batch = collate_samples([data[i] for i in range(12)], ragged_keys=dm.ragged_keys)
    # 64 columns -> 32: x halves; 48 rows -> 32: y times 2/3.
    scale = np.array([32 / 64, 32 / 48, 32 / 64, 32 / 48], np.float32)
    negatives = 0
    for i, path in enumerate(batch["path"]):
        p, k = (int(v) for v in Path(path).stem[1:].split("_"))
        expected = np.array(boxes_of(p, k), np.float32).reshape(-1, 4) * scale
        np.testing.assert_allclose(batch["boxes"][i].numpy(), expected, rtol=1e-6)
        assert batch["labels"][i].tolist() == [dm.class_names.index(label_of(p, b)) for b in range(len(expected))]
        assert batch["orig_size"][i].tolist() == [ROWS, COLS]
        assert batch["sop_instance_uid"][i] == f"{UID}.{p}.{k}" and int(batch["frame"][i]) == 0
        negatives += len(expected) == 0
    assert negatives == 4  # kept, with zero boxes
    # Hand-checked: the first box of s1_0 is x 7..19, y 9..19 -> x 3.5..9.5, y 6..12.667.
    s1_0 = next(i for i, p in enumerate(batch["path"]) if Path(p).name == "s1_0.dcm")
    np.testing.assert_allclose(batch["boxes"][s1_0][0].numpy(), [3.5, 6.0, 9.5, 19 * 2 / 3], rtol=1e-6)


def test_boxes_follow_target_spacing_resampling(tmp_path):
    # PixelSpacing 0.7 mm resampled to 1.4 mm halves the image to 32x24: the boxes as read halve
    # too, and at the network input they are where they are without resampling.
    manifest = box_study(tmp_path)
    plain, coarse = module(manifest, image_size=[16, 16]), module(manifest, image_size=[16, 16], target_spacing=1.4)
    i = next(i for i, p in enumerate(coarse.source.paths) if Path(p).name == "s2_1.dcm")
    sample = coarse.source.read(i)
    assert sample["image"].shape == (24, 32, 1) and sample["orig_size"].tolist() == [ROWS, COLS]
    np.testing.assert_allclose(sample["boxes"], np.array(boxes_of(2, 1), np.float32) / 2)
    for dm in (plain, coarse):
        dm.ensure_stats()
    at_input = [EvalDetectionTransform([16, 16], dm.mean, dm.std)(dm.source.read(i))["boxes"] for dm in (plain, coarse)]
    np.testing.assert_allclose(at_input[0].numpy(), at_input[1].numpy(), rtol=1e-6)
    np.testing.assert_allclose(coarse.train_boxes().shape, plain.train_boxes().shape)


def test_one_file_spelled_two_ways_is_one_image(tmp_path):
    manifest = box_study(tmp_path)
    manifest.write_text(manifest.read_text() + "slices/../slices/s0_0.dcm,30,30,40,40,mass,ZZPID00000\n")
    dm = module(manifest)
    assert len(dm.source) == 12
    i = next(i for i, p in enumerate(dm.source.paths) if Path(p).name == "s0_0.dcm")
    assert dm.source.images[i].labels == ("nodule", "mass") and dm.source.images[i].rows == ("row 2", "row 18")


def test_monochrome1_and_rescale_give_the_same_values(tmp_path):
    # MONOCHROME1 files store the rectangle dark and the rescale doubles the stored steps; read
    # with window null (modality values, MONOCHROME1 inverted over its range) every image holds
    # HU 400 inside its boxes and about 0 elsewhere.
    dm = module(box_study(tmp_path))
    inverted = 0
    for i, item in enumerate(dm.source.images):
        image = dm.source.read_image(i)[..., 0]
        inverted += item.info.mode == "MONOCHROME1"
        for x0, y0, x1, y1 in item.boxes.astype(int):
            np.testing.assert_array_equal(image[y0:y1, x0:x1], 400.0)
        assert abs(float(np.median(image))) < 10
    assert inverted == 6


def patients_in(dm, split) -> set[str]:
    return {Path(dm.source.paths[i]).stem.split("_")[0] for i in dm.splits[split]}


def test_patient_level_split_is_disjoint_and_keeps_negatives(tmp_path):
    dm = module(box_study(tmp_path, patients=9))
    dm.setup("fit")
    owners = {s: patients_in(dm, s) for s in ("train", "val", "test")}
    assert not owners["train"] & owners["val"] and not owners["train"] & owners["test"]
    assert not owners["val"] & owners["test"]
    assert set().union(*owners.values()) == {f"s{p}" for p in range(9)}
    ids = {s: {dm.source.ids[i] for i in dm.splits[s]} for s in owners}
    assert sum(len(v) for v in ids.values()) == 18 and len(set().union(*ids.values())) == 18
    # Patient keys are hashed: the PatientIDs of the manifest are nowhere in the source.
    assert not any("ZZPID" in str(g) for g in dm.source.groups)


def test_patients_from_the_headers(tmp_path):
    manifest = box_study(tmp_path)
    rows = read_csv(manifest)
    with manifest.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "x0", "y0", "x1", "y1", "label"])
        writer.writeheader()
        writer.writerows({k: v for k, v in r.items() if k != "patient_id"} for r in rows)
    dm = module(manifest, patient_column=None)
    dm.setup("fit")
    assert len(set(dm.source.groups)) == 6
    owners = {s: patients_in(dm, s) for s in ("train", "val", "test")}
    assert not owners["train"] & owners["test"] and not owners["val"] & owners["test"]


def test_multiframe_files_need_the_frame_column(tmp_path):
    manifest = box_study(tmp_path)
    lesion_slice(tmp_path / "slices" / "cine.dcm", [(10, 12, 30, 40)], 0, 7, inverted=False, frames=3,
                 box_frame=2)
    text = manifest.read_text()
    manifest.write_text(text + "slices/cine.dcm,10,12,30,40,nodule,ZZPID00000\n")
    with pytest.raises(DataError, match=r"boxes.csv' row 18: 'slices/cine.dcm' has 3 frames.*'frame' column"):
        _ = module(manifest).source
    rows = list(csv.DictReader(io.StringIO(text)))
    rows.append({"path": "slices/cine.dcm", "x0": "10", "y0": "12", "x1": "30", "y1": "40", "label": "nodule",
                 "patient_id": "ZZPID00000", "frame": "2"})
    with manifest.open("w", newline="") as f:  # single-frame rows leave the frame empty
        writer = csv.DictWriter(f, fieldnames=[*rows[0], "frame"])
        writer.writeheader()
        writer.writerows(rows)
    dm = module(manifest)
    i = next(i for i, p in enumerate(dm.source.paths) if p.endswith("cine.dcm"))
    assert dm.source.frames[i] == 2 and dm.source.ids[i].endswith("cine.dcm#frame2")
    image = dm.source.read_image(i)[..., 0]
    assert image[12:40, 10:30].mean() > image.mean() + 3 * image.std() / 2  # the box's frame, not the middle
    manifest.write_text(manifest.read_text().replace("ZZPID00000,2\n", "ZZPID00000,3\n"))
    with pytest.raises(DataError, match="row 18: frame 3 is out of range: 'slices/cine.dcm' has 3 frame"):
        _ = module(manifest).source


def test_predict_inputs_are_every_frame_and_unreadable_files_follow_the_policy(tmp_path):
    dm = module(box_study(tmp_path), on_bad_annotation="skip")
    (tmp_path / "new").mkdir()
    cine = lesion_slice(tmp_path / "new" / "cine.dcm", [], 1, 9, inverted=True, frames=3)
    (tmp_path / "new" / "notes.dcm").write_text("not an image")
    source = dm.predict_source([cine, tmp_path / "new" / "notes.dcm", tmp_path / "slices" / "s0_0.dcm"])
    assert source.frames == [0, 1, 2, 0] and source.class_names == dm.class_names
    assert [Path(i).name for i in source.ids] == ["cine.dcm#frame0", "cine.dcm#frame1", "cine.dcm#frame2", "s0_0.dcm"]
    assert source.uids == [f"{UID}.1.9"] * 3 + [f"{UID}.0.0"]
    assert [Path(p).name for p, _ in dm.skipped] == ["notes.dcm"]
    sample = source.read(2)
    assert sample["frame"] == 2 and sample["boxes"].shape == (0, 4) and sample["patient_index"] == -1
    with pytest.raises(DataError, match="notes.dcm.*not a DICOM file"):
        module(box_study(tmp_path / "b")).predict_source([tmp_path / "new" / "notes.dcm"])


# ---- bad rows --------------------------------------------------------------------------------
BAD_ROWS = {
    "outside": ("slices/s0_0.dcm,50,5,70,20,nodule,ZZPID00000", r"reaches 6.0 px outside the 64x48 image"),
    "inverted": ("slices/s0_0.dcm,20,5,10,20,nodule,ZZPID00000", r"has x1 < x0"),
    "unknown_label": ("slices/s0_0.dcm,5,5,10,10,nodul,ZZPID00000",
                      r"class 'nodul' is not in class_order \['mass', 'nodule'\] \(did you mean 'nodule'\?\)"),
    "missing_file": ("slices/nothere.dcm,5,5,10,10,nodule,ZZPID00000", r"'slices/nothere.dcm' does not exist"),
    "not_a_number": ("slices/s0_0.dcm,5,five,10,10,nodule,ZZPID00000", r"y0 'five' is not a number"),
    "half_empty": ("slices/s0_0.dcm,5,5,,,nodule,ZZPID00000", r"x1, y1 empty but not the others"),
    "negative_and_box": ("slices/s4_0.dcm,5,5,10,10,nodule,ZZPID00004",
                         r"row 14 marks 'slices/s4_0.dcm' as having no objects, but row 18 gives it a box"),
    "two_patients": ("slices/s0_0.dcm,5,5,10,10,nodule,ZZPID00003", r"rows 2 and 18 give 'slices/s0_0.dcm' two different patients"),
    "not_dicom": ("notes.txt,5,5,10,10,nodule,ZZPID00000", r"not a DICOM file"),
}


@pytest.mark.parametrize("case", BAD_ROWS)
def test_a_bad_row_names_the_manifest_and_row_or_skips_its_image(tmp_path, case):
    manifest = box_study(tmp_path)
    (tmp_path / "notes.txt").write_text("reading room notes\n")
    row, message = BAD_ROWS[case]
    manifest.write_text(manifest.read_text() + row + "\n")  # row 18
    kwargs = {"class_order": ["mass", "nodule"]} if case == "unknown_label" else {}
    with pytest.raises(DataError, match=r"boxes.csv' (rows? \d+: .*)?" + message + ".*on_bad_annotation: skip"):
        _ = module(manifest, **kwargs).source
    skipping = module(manifest, on_bad_annotation="skip", **kwargs)
    bad_image = row.split(",")[0]
    expected = 12 - (bad_image in {f"slices/s{p}_{k}.dcm" for p in range(6) for k in range(2)})
    assert len(skipping.source) == expected  # the whole image is left out, not just the row
    assert len(skipping.skipped) == 1
    path, reason = skipping.skipped[0]
    assert Path(path).name == Path(bad_image).name and re.search(r"rows? (\d+ and )?18", reason)
    assert not any(Path(p).name == Path(bad_image).name for p in skipping.source.paths)
    assert "ZZPID" not in reason


def test_an_empty_manifest_or_a_missing_column_is_an_error(tmp_path):
    manifest = tmp_path / "boxes.csv"
    manifest.write_text("path,x0,y0,x1,y1,label,patient_id\n")
    with pytest.raises(DataError, match=r"boxes.csv' needs columns .*found no rows"):
        _ = module(manifest).source
    box_study(tmp_path)
    text = manifest.read_text().replace("label,", "class,", 1)
    manifest.write_text(text)
    with pytest.raises(DataError, match=r"boxes.csv' needs columns \['path', 'x0', 'y0', 'x1', 'y1', 'label', "
                                        r"'patient_id'\]; found \['path', 'x0', 'y0', 'x1', 'y1', 'class'"):
        _ = module(manifest).source
    manifest.write_text(text.replace("class,", "label,", 1).replace("mass", "nodule"))
    assert module(manifest).class_names == ["nodule"]  # classes: the sorted labels found


def test_options_of_file_annotations_are_refused(tmp_path):
    with pytest.raises(DataError, match=r"remove \['annotations'\]"):
        DicomDetectionDataModule(manifest="x.csv", annotations="coco.json")
    with pytest.raises(DataError, match="needs data.init_args.manifest"):
        DicomDetectionDataModule()


# ---- the task: patient-level sensitivity -----------------------------------------------------
def test_patient_sensitivity_by_hand():
    task = MedicalDetectionTask(num_classes=2, class_names=["mass", "nodule"], in_chans=1, fpn_channels=32, **TINY)
    truth = torch.tensor([[10.0, 10.0, 20.0, 20.0]])
    off = torch.tensor([[0.0, 0.0, 4.0, 4.0]])
    none = torch.zeros((0, 4))

    def det(boxes, score, label=1):
        n = len(boxes)
        return {"boxes": boxes, "scores": torch.full((n,), score), "labels": torch.full((n,), label)}

    def tgt(boxes):
        return {"boxes": boxes, "labels": torch.ones(len(boxes), dtype=torch.int64)}

    outputs = [det(truth, 0.8),      # patient 0: a true positive at 0.5
               det(none, 0.0),       # patient 0: missed, but the patient is found already
               det(truth, 0.3),      # patient 1: matched, below the threshold
               det(off, 0.9),        # patient 1: a false positive only
               det(truth, 0.9),      # patient 2: no object (left out of the rate)
               det(truth, 0.9, 0)]   # patient 3: right place, wrong class: not a true positive
    targets = [tgt(truth), tgt(truth), tgt(truth), tgt(truth), tgt(none), tgt(truth)]
    task._eval_batch = {"patient_index": torch.tensor([0, 0, 1, 1, 2, 3])}
    task.update_metrics("test", outputs, targets)
    task.threshold.fill_(0.5)
    assert task._patient_rates("test") == {"test/op_patient_sensitivity": pytest.approx(1 / 3)}
    # At 0.25 patient 1 is found too.
    value, found, positive = patient_sensitivity(torch.tensor([0, 0, 1, 1, 2, 3]),
                                                 torch.tensor([0.8, -math.inf, 0.3, -math.inf, -math.inf, -math.inf]),
                                                 torch.tensor([True, True, True, True, False, True]), 0.25)
    assert (value, found, positive) == (pytest.approx(2 / 3), 2, 3)
    assert math.isnan(patient_sensitivity(torch.tensor([4]), torch.tensor([0.9]), torch.tensor([False]), 0.5)[0])


def test_writer_maps_boxes_back_to_the_stored_image(tmp_path):
    from domains.medical.detection_task import DicomDetectionFileWriter

    class Run:  # the trainer attributes the writer reads
        log_dir, world_size = str(tmp_path), 1

    writer = DicomDetectionFileWriter()
    writer.on_predict_start(Run(), None)
    prediction = {"id": ["a", "b"], "boxes": [torch.tensor([[4.0, 8.0, 12.0, 16.0]]), torch.zeros((0, 4))],
                  "scores": [torch.tensor([0.75]), torch.zeros(0)], "labels": [torch.tensor([1]), torch.zeros(0, dtype=torch.int64)],
                  "kept": [torch.tensor([True]), torch.zeros(0, dtype=torch.bool)], "threshold": 0.5,
                  "class_names": ["mass", "nodule"]}
    batch = {"image": torch.zeros(2, 1, 32, 32), "orig_size": torch.tensor([[48, 64], [48, 64]]),
             "path": ["x/a.dcm", "x/b.dcm"], "sop_instance_uid": ["1.2.3", "1.2.4"], "frame": torch.tensor([0, 2])}
    writer.write_on_batch_end(Run(), None, prediction, None, batch, 0, 0)
    writer.on_predict_end(Run(), None)
    rows = read_csv(tmp_path / "detections.csv")
    # 32 -> 64 columns doubles x; 32 -> 48 rows is 1.5 times y.
    assert rows[0] == {"path": "x/a.dcm", "sop_instance_uid": "1.2.3", "frame": "0", "x0": "8.0", "y0": "12.0",
                       "x1": "24.0", "y1": "24.0", "label": "nodule", "score": "0.75000", "kept": "1",
                       "threshold": "0.500000"}
    assert rows[1]["path"] == "x/b.dcm" and rows[1]["frame"] == "2" and rows[1]["x0"] == rows[1]["label"] == ""
    images = json.loads((tmp_path / "detections.json").read_text())["images"]
    assert images[0]["size"] == [48, 64] and images[0]["detections"][0]["box"] == [8.0, 12.0, 24.0, 24.0]
    assert images[1]["detections"] == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["detections.csv", "detections.json"]  # no temporaries
    Run.world_size = 2  # each process would write its share under the same name
    with pytest.raises(DataError, match="detections.csv is written by one process.*--trainer.devices=1"):
        writer.on_predict_start(Run(), None)


# ---- through the CLI -------------------------------------------------------------------------
def test_cli_fit_test_predict_and_no_identifier_in_any_written_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    manifest = box_study(tmp_path / "study")
    # A row giving s0_1 another patient's ID: skipped, and listed without the IDs.
    manifest.write_text(manifest.read_text() + "slices/s0_1.dcm,5,5,10,10,nodule,ZZPID00003\n")
    base = ["--config", str(ROOT / "configs" / "medical" / "detection.yaml"), *TINY_ARGS,
            "--model.init_args.fpn_channels=32", f"--data.init_args.manifest={manifest}",
            "--data.init_args.image_size=32", "--data.init_args.batch_size=4", "--data.init_args.num_workers=0",
            "--data.init_args.val_fraction=0.34", "--data.init_args.test_fraction=0.34",
            f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}", "--data.init_args.on_bad_annotation=skip"]
    fit = run_cli(["fit", *base, "--trainer.max_epochs=1"])  # one step: 4 training images
    assert fit.trainer.global_step == 1 and fit.model.hparams.class_names == ["mass", "nodule"]
    best = fit.trainer.checkpoint_callback.best_model_path
    test = run_cli(["test", *base, f"--ckpt_path={best}"])
    metrics = json.loads((Path(test.trainer.log_dir) / "metrics.json").read_text())["metrics"]
    assert {"map", "map_50", "op_object_sensitivity", "op_image_sensitivity"} <= set(metrics)
    assert 0.0 <= metrics["op_patient_sensitivity"] <= 1.0
    pred = run_cli(["predict", *base, f"--ckpt_path={best}",
                    f"--data.init_args.predict_paths=[{manifest.parent / 'slices'}]"])
    rows = read_csv(Path(pred.trainer.log_dir) / "detections.csv")
    assert {Path(r["path"]).name for r in rows} == {f"s{p}_{k}.dcm" for p in range(6) for k in range(2)}
    assert {r["sop_instance_uid"] for r in rows} == {f"{UID}.{p}.{k}" for p in range(6) for k in range(2)}
    images = json.loads((Path(pred.trainer.log_dir) / "detections.json").read_text())["images"]
    assert len(images) == 12 and all(i["size"] == [ROWS, COLS] for i in images)

    written = [p for p in (tmp_path / "runs").rglob("*") if p.is_file()]
    assert {"metrics.json", "detections.csv", "detections.json", "metrics.csv", "skipped_files.csv"} <= {
        p.name for p in written}
    skipped = read_csv(Path(fit.trainer.log_dir) / "skipped_files.csv")
    assert [Path(r["path"]).name for r in skipped] == ["s0_1.dcm"] and "two different patients" in skipped[0]["reason"]
    assert any(p.suffix == ".ckpt" for p in written)
    identifiers = set()
    for i in range(6):
        who = patient_identity(i)
        identifiers |= {who["PatientName"], who["PatientName"].replace("^", " "), who["PatientID"],
                        who["PatientBirthDate"], who["AccessionNumber"], "Zelda"}
    for path in written:
        data = path.read_bytes()
        for ident in identifiers:
            assert ident.encode() not in data, f"{ident} found in {path}"
