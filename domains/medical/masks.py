"""Segmentation masks for DICOM images: PNG/TIFF, NumPy arrays, or DICOM SEG objects."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from core.errors import DataError

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


def _encode(raw: np.ndarray, mask_values: list[int] | None) -> np.ndarray:
    """Raw mask values -> class indices (0 = background, k = k-th entry of ``mask_values``)."""
    if mask_values is None:
        return (raw > 0).astype(np.int64)
    out = np.zeros(raw.shape, dtype=np.int64)
    for k, value in enumerate(mask_values, start=1):
        out[raw == value] = k
    return out


def read_dicom_seg(path: str | Path) -> np.ndarray:
    """Segment numbers (0 = none) of a 2D DICOM SEG: one binary or fractional frame per segment."""
    import pydicom

    ds = pydicom.dcmread(path)
    if ds.get("SOPClassUID") != SEGMENTATION_STORAGE:
        raise DataError(f"'{path}' is a DICOM file but not a Segmentation object (SOP class "
                        f"{ds.get('SOPClassUID')}); give a DICOM SEG, PNG or .npy mask")
    frames = ds.pixel_array
    frames = frames[None] if frames.ndim == 2 else frames
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is None or len(per_frame) != len(frames):
        raise DataError(f"DICOM SEG '{path}' lacks one PerFrameFunctionalGroupsSequence item per frame")
    out = np.zeros(frames.shape[1:], dtype=np.int64)
    threshold = 0.5 * (float(ds.get("MaximumFractionalValue", 1)) if ds.get("SegmentationType") == "FRACTIONAL" else 1)
    for frame, item in zip(frames, per_frame, strict=True):
        segment = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        out[frame >= threshold] = segment
    return out


def read_mask(path: str | Path, mask_values: list[int] | None = None) -> np.ndarray:
    """Mask as HW int64 class indices; an unreadable mask is a :class:`DataError` naming it."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".npy":
            raw = np.load(path, allow_pickle=False)
        elif path.suffix.lower() in (".dcm", ".dicom") or _is_dicom(path):
            raw = read_dicom_seg(path)
            return _encode(raw, mask_values) if mask_values is not None else raw
        else:
            with Image.open(path) as img:
                raw = np.asarray(img)
    except DataError:
        raise
    except (OSError, ValueError, UnidentifiedImageError) as err:
        raise DataError(f"cannot read mask '{path}' ({type(err).__name__}: {err}); give a PNG/TIFF, "
                        ".npy or DICOM SEG mask") from err
    if raw.ndim == 3:  # an RGB(A) export of a label image: any channel holds the label
        raw = raw[..., 0]
    if raw.ndim != 2:
        raise DataError(f"mask '{path}' has shape {raw.shape}; a 2D label image is expected")
    return _encode(raw, mask_values)


def _is_dicom(path: Path) -> bool:
    with path.open("rb") as f:
        f.seek(128)
        return f.read(4) == b"DICM"
