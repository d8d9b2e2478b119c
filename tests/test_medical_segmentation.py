"""Medical segmentation: DICOM SEG frames per source image, HD95 in mm, the monitored Dice, predict."""

import csv
from functools import partial
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from PIL import Image
from torch.nn import functional as F
from torch.utils.data import DataLoader

from core.atomic import write_atomic
from core.cli import run_cli
from core.data import DataError, TransformedDataset, collate_samples
from core.segmentation_metrics import HausdorffDistance95
from core.transforms import eval_transform
from domains.medical import DicomSegmentationDataModule, MedicalSegmentationTask
from domains.medical.masks import read_mask, source_image
from domains.medical.prediction import dicom_seg

from .conftest import TINY, TINY_ARGS
from .dicom_helpers import (
    make_ct_study,
    patient_identity,
    write_dicom,
    write_seg_highdicom,
    write_seg_vendor,
    write_series,
)

ROOT = Path(__file__).resolve().parents[1]
IDENTIFIERS = [v for k, v in patient_identity(7).items()] + ["Zelda07"]


def square(shape, rows, cols) -> np.ndarray:
    out = np.zeros(shape, bool)
    out[rows[0]:rows[1], cols[0]:cols[1]] = True
    return out


# ---- item 9: DICOM SEG frames belong to the image they reference ------------------------------
@pytest.fixture
def volume(tmp_path):
    """Three CT slices and a highdicom SEG: two segments, overlapping on slice 1, none on slice 2."""
    slices = write_series(tmp_path / "ct", [np.full((8, 10), 1000 + k, np.uint16) for k in range(3)])
    masks = np.zeros((3, 8, 10, 2), bool)
    masks[0, ..., 0] = square((8, 10), (1, 4), (1, 4))
    masks[1, ..., 0] = square((8, 10), (2, 6), (2, 6))
    masks[1, ..., 1] = square((8, 10), (4, 7), (4, 8))  # overlaps segment 1 on rows 4-5, cols 4-5
    seg = write_seg_highdicom(tmp_path / "seg.dcm", slices, masks)
    return slices, masks, seg


def test_seg_frames_are_taken_from_the_referenced_slice_only(volume):
    slices, masks, seg = volume
    first = read_mask(seg, [1, 2], source_image(slices[0]))
    assert np.array_equal(first, masks[0, ..., 0].astype(int))  # not the union of all slices
    assert not read_mask(seg, None, source_image(slices[2])).any()  # slice without frames: empty
    union = read_mask(seg, None, source_image(slices[1]))  # one foreground class: overlap is fine
    assert np.array_equal(union, (masks[1, ..., 0] | masks[1, ..., 1]).astype(int))


def test_overlapping_segments_are_an_error_unless_a_priority_is_chosen(volume):
    slices, masks, seg = volume
    with pytest.raises(DataError, match=r"overlap.*seg\.dcm.*img1\.dcm.*4 pixel.*segments 1 and 2.*first_listed"):
        read_mask(seg, [1, 2], source_image(slices[1]))
    labels = read_mask(seg, [1, 2], source_image(slices[1]), segment_overlap="first_listed")
    assert labels[4, 4] == 1 and labels[6, 6] == 2 and labels[3, 3] == 1 and labels[0, 0] == 0
    reversed_order = read_mask(seg, [2, 1], source_image(slices[1]), segment_overlap="first_listed")
    assert reversed_order[4, 4] == 1  # class 1 is now segment 2, listed first
    with pytest.raises(DataError, match=r"mask_values \[3\].*segments \[1, 2\]"):
        read_mask(seg, [1, 3], source_image(slices[0]))


def test_seg_of_another_image_is_refused_naming_both_files(volume, tmp_path):
    _, _, seg = volume
    other = write_series(tmp_path / "other", [np.zeros((8, 10), np.uint16)], prefix="unrelated")[0]
    with pytest.raises(DataError) as info:
        read_mask(seg, None, source_image(other))
    message = str(info.value)
    assert "seg.dcm" in message and "unrelated0.dcm" in message and "references 3 other image" in message
    assert not any(ident in message for ident in IDENTIFIERS)


def test_vendor_seg_of_a_multiframe_image_maps_frames_by_number(tmp_path):
    frames = np.stack([np.full((8, 10), k, np.uint16) for k in range(3)])
    cine = write_dicom(tmp_path / "cine.dcm", frames, modality="OT", SOPInstanceUID=pydicom.uid.generate_uid(),
                       StudyInstanceUID=pydicom.uid.generate_uid(),
                       SeriesInstanceUID=pydicom.uid.generate_uid(), **patient_identity(7))
    a, b = square((8, 10), (1, 5), (1, 5)), square((8, 10), (3, 7), (3, 9))
    # Frames in no particular order; source frame 2 (1-based) has none.
    seg = write_seg_vendor(tmp_path / "vendor.dcm", cine, [(2, 3, a), (1, 1, a), (1, 3, b)], segments=2)
    assert np.array_equal(read_mask(seg, [1, 2], source_image(cine, 0)), a.astype(int))
    assert not read_mask(seg, [1, 2], source_image(cine, 1)).any()
    last = read_mask(seg, [1, 2], source_image(cine, 2), segment_overlap="first_listed")
    assert np.array_equal(last, np.where(b, 1, np.where(a, 2, 0)))
    # A SEG that says its frames are not on the image grid is refused, not used.
    moved = write_seg_vendor(tmp_path / "moved.dcm", cine, [(1, 1, a)], segments=1,
                             spatial_locations_preserved="NO")
    with pytest.raises(DataError, match="moved.dcm.*not on that image's pixel grid"):
        read_mask(moved, None, source_image(cine, 0))


def test_vendor_seg_of_a_single_frame_image(tmp_path):
    image = write_series(tmp_path / "ct", [np.zeros((8, 10), np.uint16)])[0]
    a, b = square((8, 10), (1, 5), (1, 5)), square((8, 10), (3, 7), (3, 9))
    seg = write_seg_vendor(tmp_path / "vendor.dcm", image, [(1, None, a), (2, None, b)], segments=2,
                           spatial_locations_preserved="YES")
    labels = read_mask(seg, [2, 1], source_image(image), segment_overlap="first_listed")
    assert np.array_equal(labels, np.where(b, 1, np.where(a, 2, 0)))


def test_datamodule_gives_each_slice_its_own_seg_frames(volume, tmp_path):
    slices, masks, seg = volume
    rows = ["path,mask,patient_id"] + [f"{p},{seg},P{k}" for k, p in enumerate(slices)]
    (tmp_path / "m.csv").write_text("\n".join(rows))
    dm = DicomSegmentationDataModule(manifest=str(tmp_path / "m.csv"), mask_values=[1, 2],
                                     segment_overlap="first_listed", foreground_names=["a", "b"])
    assert dm.source.labels.tolist() == [1, 1, 0]  # slice 2 has no foreground
    assert np.array_equal(dm.source.read(0)["mask"], masks[0, ..., 0].astype(int))
    with pytest.raises(DataError, match="overlap"):
        _ = DicomSegmentationDataModule(manifest=str(tmp_path / "m.csv"), mask_values=[1, 2]).source


# ---- item 8: HD95 in mm with each image's spacing and resize ----------------------------------
def test_hd95_uses_per_image_anisotropic_spacing():
    target = torch.zeros(2, 24, 24, dtype=torch.long)
    target[:, 6:18, 6:18] = 1
    preds = torch.zeros_like(target)
    preds[0, 6:18, 9:21] = 1  # 3 columns to the right
    preds[1, 9:21, 6:18] = 1  # 3 rows down
    metric = HausdorffDistance95(2)
    metric.update(preds, target, spacing=torch.tensor([[0.5, 0.25], [0.5, 0.25]]))
    # Every edge pixel is at most the shift away and a whole side is exactly that far, so the
    # 95th percentile is the shift: 3 x 0.25 mm for the column shift, 3 x 0.5 mm for the row shift.
    assert float(metric.compute()) == pytest.approx((3 * 0.25 + 3 * 0.5) / 2)


def test_hd95_on_non_square_masks():
    # torchmetrics 1.9's torch distance transform indexes rows by the height (its issue #3300):
    # wider-than-tall masks gave 11.05 here and taller-than-wide ones an IndexError.
    for shape, shift in (((12, 30), (0, 4)), ((30, 12), (4, 0))):
        target = torch.zeros(1, *shape, dtype=torch.long)
        target[0, 3:9, 3:9] = 1
        preds = torch.roll(target, shift, dims=(1, 2))
        metric = HausdorffDistance95(2)
        metric.update(preds, target)
        assert float(metric.compute()) == pytest.approx(4.0)  # the shift, by the argument above


@pytest.fixture
def two_grids(tmp_path):
    """Image A 40x80 at 0.5 x 0.8 mm, image B 80x40 at 0.7 x 0.3 mm, each with a square mask."""
    images = [("a", (40, 80), (0.5, 0.8), (8, 24), (16, 48)), ("b", (80, 40), (0.7, 0.3), (16, 48), (8, 24))]
    rows = ["path,mask,patient_id"]
    for name, shape, spacing, r, c in images:
        write_dicom(tmp_path / f"{name}.dcm", np.zeros(shape, np.uint16), PixelSpacing=list(spacing))
        Image.fromarray(square(shape, r, c).astype(np.uint8) * 255).save(tmp_path / f"{name}.png")
        rows.append(f"{name}.dcm,{name}.png,{name}")
    (tmp_path / "m.csv").write_text("\n".join(rows))
    dm = DicomSegmentationDataModule(manifest=str(tmp_path / "m.csv"), image_size=20)
    data = TransformedDataset(dm.source, np.arange(2), eval_transform(20, [0.0], [1.0]))
    return next(iter(DataLoader(data, batch_size=2, collate_fn=partial(collate_samples,
                                                                        ragged_keys=dm.ragged_keys))))


@pytest.mark.parametrize("resolution", ["network", "native"])
def test_hd95_in_mm_follows_each_images_spacing_and_resize(two_grids, resolution):
    batch = two_grids
    # 40x80 -> 20x20 shrinks rows by 2 and columns by 4; 80x40 -> 20x20 rows by 4, columns by 2.
    target = batch["mask"]
    assert target[0].sum() == 8 * 8 and target[1].sum() == 8 * 8  # the squares survive the resize
    # Predictions: A's square 2 network columns (= 8 native columns) to the right, B's square
    # 2 network rows (= 8 native rows) down.
    preds = torch.stack([torch.roll(target[0], 2, dims=1), torch.roll(target[1], 2, dims=0)])
    logits = F.one_hot(preds, 2).permute(0, 3, 1, 2).float() * 10
    task = MedicalSegmentationTask(**TINY, in_chans=1, num_classes=2, decoder_channels=8,
                                   hd95_resolution=resolution)
    task.on_test_batch_start(batch, 0)
    task.update_metrics("test", logits, target)
    # By hand: a shift of d pixels gives HD95 = d x pixel size along the shift (see the
    # anisotropic test above). A: 8 native columns x 0.8 mm = 6.4 mm; B: 8 native rows x 0.7 mm
    # = 5.6 mm; their mean is 6.0 mm. (A constant spacing on the 20x20 grid would give 2 px.)
    assert float(task.test_hd95.compute()) == pytest.approx(6.0)


def test_hd95_refuses_to_mix_mm_and_pixels(two_grids):
    batch = dict(two_grids)
    batch["spacing"] = batch["spacing"].clone()
    batch["spacing"][1] = float("nan")  # B has no PixelSpacing
    task = MedicalSegmentationTask(**TINY, in_chans=1, num_classes=2, decoder_channels=8)
    logits = F.one_hot(batch["mask"], 2).permute(0, 3, 1, 2).float()
    task.on_test_batch_start(batch, 0)
    with pytest.raises(DataError, match="mix mm and pixels.*pixel_spacing"):
        task.update_metrics("test", logits, batch["mask"])
    fallback = MedicalSegmentationTask(**TINY, in_chans=1, num_classes=2, decoder_channels=8,
                                       pixel_spacing=[0.7, 0.3])
    fallback.on_test_batch_start(batch, 0)
    fallback.update_metrics("test", logits, batch["mask"])  # perfect prediction: 0 mm
    assert float(fallback.test_hd95.compute()) == 0.0


# ---- item 10: the monitored metric, and predict writes masks ----------------------------------
def test_monitor_is_the_foreground_mean_dice():
    task = MedicalSegmentationTask(**TINY, in_chans=1, num_classes=3, decoder_channels=8)
    assert task.monitor == "val/dice" and task.monitor_mode == "max"
    target = torch.zeros(1, 10, 10, dtype=torch.long)
    target[0, :2, :5] = 1  # 10 pixels of class 1
    target[0, 5:, :] = 2  # 50 pixels of class 2
    preds = target.clone()
    preds[0, :2, :] = 1  # class 1: 10 of 20 predicted are right -> Dice 2*10/(20+10) = 2/3
    preds[0, 5:, 5:] = 0
    preds[0, 9, :5] = 0  # class 2: 20 predicted, all right, of 50 -> Dice 2*20/(20+50) = 4/7
    task.val_metrics.update(preds, target)
    values = task.val_metrics.compute()
    assert float(values["val/dice"]) == pytest.approx((2 / 3 + 4 / 7) / 2)  # background left out


def test_cli_fit_keeps_best_dice_and_predict_writes_native_masks(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    study = make_ct_study(tmp_path / "study", n_patients=6, per_patient=2, size=40)
    base = ["--config", str(ROOT / "configs" / "medical" / "segmentation.yaml"), *TINY_ARGS,
            f"--data.init_args.manifest={study['masks']}", "--data.init_args.image_size=32",
            "--data.init_args.batch_size=4", "--data.init_args.num_workers=0",
            "--data.init_args.val_fraction=0.34", "--data.init_args.test_fraction=0.16",
            "--model.init_args.decoder_channels=8", f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
            "--trainer.enable_progress_bar=false"]
    fit = run_cli(["fit", *base, "--trainer.max_epochs=2"])
    checkpoint = fit.trainer.checkpoint_callback
    assert checkpoint.monitor == "val/dice"
    logged = [float(r["val/dice"]) for r in csv.DictReader((Path(fit.trainer.log_dir) / "metrics.csv").open())
              if r.get("val/dice")]
    assert float(checkpoint.best_model_score) == pytest.approx(max(logged))

    predict_dir = study["slices"]
    pred = run_cli(["predict", *base, f"--ckpt_path={checkpoint.best_model_path}",
                    f"--data.init_args.predict_paths=[{predict_dir}]", "--data.init_args.predict_format=both"])
    out = Path(pred.trainer.log_dir) / "predictions"
    rows = list(csv.DictReader((out / "masks.csv").open()))
    assert len(rows) == 12
    for row in rows:
        source = Path(row["id"])
        uid = pydicom.dcmread(source, stop_before_pixels=True).SOPInstanceUID
        assert row["mask_png"] == f"{uid}_mask.png" and row["dicom_seg"] == f"{uid}_seg.dcm"
        png = np.asarray(Image.open(out / row["mask_png"]))
        assert png.shape == (40, 40) and png.dtype == np.uint8 and set(np.unique(png)) <= {0, 1}
        # The SEG references its image and holds the same classes as the PNG.
        assert np.array_equal(read_mask(out / row["dicom_seg"], None, source_image(source)), png)
    assert not list(out.glob(".*partial*"))
    # No identifier in any name, nor in any file but the SEGs (which must copy the patient module).
    for path in (tmp_path / "runs").rglob("*"):
        assert not any(ident in str(path.relative_to(tmp_path)) for ident in IDENTIFIERS)
        if path.is_file() and not path.name.endswith("_seg.dcm"):
            data = path.read_bytes()
            for i in range(6):
                assert patient_identity(i)["PatientID"].encode() not in data, path


def test_outputs_are_renamed_only_when_complete(tmp_path):
    def fail(tmp):
        tmp.write_bytes(b"half a mask")
        raise OSError("disk full")

    with pytest.raises(OSError):
        write_atomic(tmp_path / "x_mask.png", fail)
    assert list(tmp_path.iterdir()) == []
    write_atomic(tmp_path / "x_mask.png", lambda tmp: tmp.write_bytes(b"ok"))
    assert [p.name for p in tmp_path.iterdir()] == ["x_mask.png"]


def test_dicom_seg_output_of_a_multiframe_image_is_refused_clearly(tmp_path):
    cine = write_dicom(tmp_path / "cine.dcm", np.zeros((3, 8, 10), np.uint16), modality="OT",
                       SOPInstanceUID=pydicom.uid.generate_uid(), **patient_identity(7))
    with pytest.raises(DataError, match="cine.dcm.*multi-frame.*predict_format: png") as info:
        dicom_seg(cine, 1, np.zeros((8, 10), np.uint8), ["background", "a"], "1.2.3", 1, "M")
    assert not any(ident in str(info.value) for ident in IDENTIFIERS)
