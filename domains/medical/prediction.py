"""Writing segmentation predictions at each image's own size: PNG class maps and DICOM SEG.

Output names are the source image's SOP Instance UID (plus ``_frame{n}`` for a frame of a
multi-frame file), never the input file name, which may carry a patient's name. Every file is
written under a temporary name and renamed when complete, so an interrupted run leaves no
truncated mask under a final name. A DICOM SEG copies the patient and study modules of its
source image, as the standard requires; nothing identifying goes into file names or logs.
"""

from __future__ import annotations

import csv
import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from PIL import Image
from torch.nn import functional as F

from core.atomic import write_atomic
from core.distributed import require_one_process
from core.errors import DataError

log = logging.getLogger(__name__)

PredictFormat = Literal["png", "dicom_seg", "both"]
PREDICT_FORMATS: tuple[str, ...] = ("png", "dicom_seg", "both")
# Type 2 attributes highdicom copies from the source image: present but possibly empty.
_TYPE2_SOURCE_ATTRIBUTES = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                            "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID",
                            "AccessionNumber")


def output_stem(source_path: str | Path, frame: int) -> str:
    """The image's SOP Instance UID (a hash of the path when it has none), plus its frame."""
    from domains.medical.dicom import dicom_meta

    uid = dicom_meta(source_path).get("SOPInstanceUID")
    stem = uid or "path-" + hashlib.sha256(str(source_path).encode()).hexdigest()[:16]
    return stem + (f"_frame{frame}" if frame >= 0 else "")


def labels_at_size(probs: torch.Tensor, size: Sequence[int]) -> np.ndarray:
    """(K, h, w) class probabilities -> (H, W) class indices at ``size`` (bilinear, then argmax)."""
    if tuple(probs.shape[-2:]) != tuple(size):
        probs = F.interpolate(probs[None].float(), size=tuple(int(s) for s in size),
                              mode="bilinear", align_corners=False)[0]
    labels = probs.argmax(dim=0).cpu().numpy()
    return labels.astype(np.uint8 if probs.shape[0] <= 256 else np.uint16)


def write_png(path: Path, labels: np.ndarray) -> Path:
    """A class-index PNG (8-bit, or 16-bit for more than 256 classes), written atomically."""
    image = Image.fromarray(labels, mode="L") if labels.dtype == np.uint8 else Image.fromarray(labels)
    return write_atomic(path, lambda tmp: image.save(tmp, format="PNG"))


def dicom_seg(source_path: str | Path, frame: int, labels: np.ndarray, class_names: Sequence[str],
              series_uid: str, instance_number: int, model_name: str) -> Any:
    """A binary DICOM SEG (highdicom) of ``labels`` that references its (single-frame) source image.

    Segment ``k`` is class ``k`` (``class_names[k]``; class 0 is background). The segmented
    property category and type are SNOMED "Tissue": the model's classes have no coded meaning
    here; the class name is the segment label.
    """
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    from domains.medical.dicom import _scrub

    source = pydicom.dcmread(source_path)
    for keyword in _TYPE2_SOURCE_ATTRIBUTES:
        if keyword not in source:
            setattr(source, keyword, "")
    if int(source.get("NumberOfFrames", 1) or 1) > 1:
        # highdicom maps SEG frames to a multi-frame source by plane position only; a per-frame
        # reference that is right for every kind of multi-frame image is not built here.
        raise DataError(f"DICOM SEG output is written for single-frame images only; "
                        f"'{source_path}' is multi-frame (frame {frame} predicted): use "
                        "predict_format: png")
    array = labels[None]
    algorithm = hd.AlgorithmIdentificationSequence(
        name="convnext-domains", version=_version(), family=codes.cid7162.ArtificialIntelligence,
        parameters={"model": model_name})
    segments = [
        hd.seg.SegmentDescription(
            segment_number=k, segment_label=str(class_names[k])[:64],
            segmented_property_category=codes.SCT.Tissue, segmented_property_type=codes.SCT.Tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm)
        for k in range(1, len(class_names))
    ]
    try:
        return hd.seg.Segmentation(
            source_images=[source], pixel_array=array, segmentation_type="BINARY",
            segment_descriptions=segments, series_instance_uid=series_uid, series_number=9001,
            sop_instance_uid=hd.UID(), instance_number=instance_number,
            manufacturer="convnext-domains", manufacturer_model_name=model_name[:64],
            software_versions=_version(), device_serial_number="none",
            # An all-background prediction still gets its (empty) frames.
            omit_empty_frames=bool(labels.any()))
    except Exception as err:
        raise DataError(f"cannot write a DICOM SEG for '{source_path}' ({type(err).__name__}: "
                        f"{_scrub(str(err), source)}); use predict_format: png, or complete the "
                        "image's header") from None


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("convnext-domains")
    except PackageNotFoundError:
        return "0"


class SegmentationMaskWriter(BasePredictionWriter):
    """Writes each predicted mask at its image's own size under ``<log_dir>/predictions``.

    Per image: ``<SOPInstanceUID>[_frame<n>]_mask.png`` (class index per pixel) and/or
    ``..._seg.dcm`` (DICOM SEG); ``masks.csv`` lists id, frame, and the files written.
    Batches must carry ``source_path``, ``frame`` and ``native_size`` (the DICOM predict source
    adds them); without them masks are written at the network size, named by position.

    Args:
        predict_format: ``png``, ``dicom_seg`` or ``both``; None takes the datamodule's
            ``predict_format`` (``png`` when it has none).
    """

    def __init__(self, predict_format: PredictFormat | None = None) -> None:
        super().__init__(write_interval="batch")
        if predict_format is not None and predict_format not in PREDICT_FORMATS:
            raise ValueError(f"predict_format must be one of {list(PREDICT_FORMATS)}, not {predict_format!r}")
        self.predict_format = predict_format
        self._format: str = predict_format or "png"
        self.out_dir: Path | None = None
        self.rows: list[list[str]] = []
        self._series_uid = ""

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        import pydicom

        # masks.csv lists every image of the run: one process must see them all.
        require_one_process(trainer, "masks.csv")
        self.out_dir = Path(trainer.log_dir or trainer.default_root_dir) / "predictions"
        self._format = self.predict_format or getattr(trainer.datamodule, "predict_format", None) or "png"
        if self._format not in PREDICT_FORMATS:
            raise DataError(f"predict_format '{self._format}' is not one of {list(PREDICT_FORMATS)}")
        self.rows = []
        self._series_uid = str(pydicom.uid.generate_uid())  # one SEG series per predict run

    def write_on_batch_end(self, trainer: Trainer, pl_module: LightningModule, prediction: Any,
                           batch_indices: Sequence[int] | None, batch: Any, batch_idx: int,
                           dataloader_idx: int) -> None:
        assert self.out_dir is not None  # set in on_predict_start
        probs, names = prediction["probs"], prediction["class_names"]
        for i in range(len(probs)):
            sample_id = prediction["id"][i] if prediction["id"] else str(len(self.rows))
            if "source_path" in batch:
                source, frame = batch["source_path"][i], int(batch["frame"][i])
                size = [int(v) for v in batch["native_size"][i]]
                stem = output_stem(source, frame)
            else:
                source, frame, size = None, -1, list(probs.shape[-2:])
                stem = f"sample{len(self.rows):06d}"
            labels = labels_at_size(probs[i], size)
            png = seg = ""
            if self._format in ("png", "both"):
                png = write_png(self.out_dir / f"{stem}_mask.png", labels).name
            if self._format in ("dicom_seg", "both"):
                if source is None:
                    raise DataError("predict_format dicom_seg needs DICOM inputs (the DICOM "
                                    "segmentation datamodule); use predict_format: png")
                dataset = dicom_seg(source, frame, labels, names, self._series_uid,
                                    len(self.rows) + 1, type(pl_module).__name__)
                seg = write_atomic(self.out_dir / f"{stem}_seg.dcm",
                                       lambda tmp, d=dataset: d.save_as(tmp)).name
            self.rows.append([sample_id, str(frame) if frame >= 0 else "", png, seg])

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.out_dir is None or not self.rows:
            return

        def write(tmp: Path) -> None:
            with tmp.open("w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["id", "frame", "mask_png", "dicom_seg"])
                writer.writerows(self.rows)

        write_atomic(self.out_dir / "masks.csv", write)
        log.info("wrote %d predicted mask(s) to %s", len(self.rows), self.out_dir)
