"""Segmentation masks for DICOM images: PNG/TIFF, NumPy arrays, or DICOM SEG objects.

A DICOM SEG may hold many frames (one per segment and source slice or frame); the frames used
for an image are the ones whose Derivation Image references that image's SOP Instance UID (and
frame number, for multi-frame sources). The lookup is highdicom's
(``Segmentation.get_pixels_by_source_instance`` / ``get_pixels_by_source_frame``).

Overlapping segments: a pixel in two segments that map to different classes is an error
(``segment_overlap="error"``, the default) unless the caller chooses ``"first_listed"``: then
the class listed first in ``mask_values`` wins. With ``mask_values=None`` every segment is the
one foreground class, so overlaps do not matter.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from core.errors import DataError

log = logging.getLogger(__name__)

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
LABEL_MAP_SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.7"
SegmentOverlap = Literal["error", "first_listed"]

# SEG files whose frames do not state SpatialLocationsPreserved: the assumption is logged once.
_ASSUMED_ALIGNED: set[str] = set()


@dataclass(frozen=True)
class SourceImage:
    """The image a mask is used with: how a DICOM SEG's frames are matched to it.

    Attributes:
        path: the image file (named in errors; never a patient identifier).
        sop_instance_uid: its SOP Instance UID.
        frame: 0-based frame of a multi-frame image; None for a single-frame image.
    """

    path: str
    sop_instance_uid: str
    frame: int | None = None

    def describe(self) -> str:
        where = f" frame {self.frame}" if self.frame is not None else ""
        return f"image '{self.path}'{where} (SOP Instance UID {self.sop_instance_uid})"


def source_image(path: str | Path, frame: int | str = "middle") -> SourceImage:
    """The :class:`SourceImage` of a DICOM file's frame (``frame``: index or ``middle``), from its header."""
    from domains.medical.dicom import count_frames, dicom_meta

    meta = dicom_meta(path)
    count = count_frames(path)
    if count <= 1:
        index = None
    elif frame == "middle":
        index = count // 2
    else:
        index = int(frame) % count
    return SourceImage(str(path), meta["SOPInstanceUID"] or "", index)


def _encode(raw: np.ndarray, mask_values: list[int] | None) -> np.ndarray:
    """Raw mask values -> class indices (0 = background, k = k-th entry of ``mask_values``)."""
    if mask_values is None:
        return (raw > 0).astype(np.int64)
    out = np.zeros(raw.shape, dtype=np.int64)
    for k, value in enumerate(mask_values, start=1):
        out[raw == value] = k
    return out


def _spatial_flags(ds, uid: str) -> set[str | None]:
    """SpatialLocationsPreserved of the SEG's references to ``uid`` (None where not stated)."""
    flags: set[str | None] = set()
    groups = list(ds.get("PerFrameFunctionalGroupsSequence") or [])
    groups += list(ds.get("SharedFunctionalGroupsSequence") or [])
    for group in groups:
        for derivation in group.get("DerivationImageSequence") or []:
            for source in derivation.get("SourceImageSequence") or []:
                if str(source.get("ReferencedSOPInstanceUID", "")) == uid:
                    value = source.get("SpatialLocationsPreserved")
                    flags.add(str(value).upper() if value else None)
    return flags


@functools.lru_cache(maxsize=4)
def _load_seg(path: str, mtime_ns: int, size: int) -> tuple[Any, list[str]]:
    """(highdicom Segmentation, referenced SOP Instance UIDs) of a SEG file.

    Cached per process (keyed by modification time and size): every sample of a volume reads
    the same SEG, and highdicom indexes its frames on loading.
    """
    import pydicom

    try:
        import highdicom as hd
    except ImportError:
        raise DataError(f"reading the DICOM SEG mask '{path}' needs highdicom: "
                        "pip install 'convnext-domains[medical]'") from None
    try:
        ds = pydicom.dcmread(path)
    except Exception as err:  # only the type: the text could quote header values
        raise DataError(f"cannot read mask '{path}' as DICOM ({type(err).__name__}); give a "
                        "PNG/TIFF, .npy or DICOM SEG mask") from None
    if ds.get("SOPClassUID") not in (SEGMENTATION_STORAGE, LABEL_MAP_SEGMENTATION_STORAGE):
        raise DataError(f"'{path}' is a DICOM file but not a Segmentation object (SOP class "
                        f"{ds.get('SOPClassUID')}); give a DICOM SEG, PNG or .npy mask")
    try:
        seg = hd.seg.Segmentation.from_dataset(ds, copy=False)
        referenced = sorted({str(uids[2]) for uids in seg.get_source_image_uids()})
    except Exception as err:
        from domains.medical.dicom import _scrub

        raise DataError(f"cannot read DICOM SEG '{path}' with highdicom ({type(err).__name__}: "
                        f"{_scrub(str(err), ds)}); the SEG is malformed: re-export it") from None
    return seg, referenced


def read_dicom_seg(path: str | Path, source: SourceImage | None = None) -> tuple[np.ndarray, list[int]]:
    """Binary masks of a DICOM SEG's segments for one source image.

    Args:
        path: the DICOM SEG file.
        source: the image the mask is used with; None is allowed only when the SEG references
            exactly one image.

    Returns:
        ``(masks, segment_numbers)``: bool ``(H, W, S)``, one plane per segment (fractional
        segments thresholded at 0.5), and the segment number of each plane.

    Raises:
        DataError: not a SEG, unreadable, or not matching ``source`` (naming both files).
    """
    file = Path(path)
    stat = file.stat()
    seg, referenced = _load_seg(str(file), stat.st_mtime_ns, stat.st_size)
    if source is None:
        if len(referenced) != 1:
            raise DataError(f"DICOM SEG '{path}' references {len(referenced)} images, so the image "
                            "it is used with must be given to pick its frames")
        source = SourceImage("(the image it references)", referenced[0])
    if source.sop_instance_uid not in referenced:
        raise DataError(
            f"DICOM SEG '{path}' does not segment {source.describe()}: it references "
            f"{len(referenced)} other image(s). Pair each image with the SEG made from it "
            "(fix the manifest row)")
    flags = _spatial_flags(seg, source.sop_instance_uid)
    if flags - {"YES", None}:
        raise DataError(f"DICOM SEG '{path}' says its frames for {source.describe()} are not on "
                        "that image's pixel grid (SpatialLocationsPreserved NO/REORIENTED_ONLY); "
                        "resample the SEG onto the image grid")
    unstated = None in flags
    if unstated and str(path) not in _ASSUMED_ALIGNED:
        _ASSUMED_ALIGNED.add(str(path))
        log.info("DICOM SEG '%s' does not state SpatialLocationsPreserved; assuming its frames lie "
                 "on the pixel grid of the images they reference (sizes are checked)", path)
    options = dict(combine_segments=False, ignore_spatial_locations=unstated,
                   assert_missing_frames_are_empty=True, skip_overlap_checks=True)
    try:
        if source.frame is None:
            pixels = seg.get_pixels_by_source_instance([source.sop_instance_uid], **options)[0]
        else:
            pixels = seg.get_pixels_by_source_frame(
                source.sop_instance_uid, source_frame_numbers=[source.frame + 1], **options)[0]
    except Exception as err:
        from domains.medical.dicom import _scrub

        raise DataError(f"cannot take the frames of {source.describe()} from DICOM SEG '{path}' "
                        f"({type(err).__name__}: {_scrub(str(err), seg)})") from None
    numbers = [int(n) for n in seg.segment_numbers]
    # Fractional values come rescaled to [0, 1]; binary ones are 0/1.
    return np.asarray(pixels) >= 0.5, numbers


def encode_segments(masks: np.ndarray, numbers: list[int], mask_values: list[int] | None,
                    overlap: SegmentOverlap, where: str) -> np.ndarray:
    """Per-segment binary masks -> HW int64 class indices.

    ``mask_values=None``: every segment is the single foreground class 1. Otherwise class ``k``
    is segment ``mask_values[k-1]``; other segments are background. A pixel of two classes is
    an error (``overlap="error"``) or takes the class listed first (``"first_listed"``).
    """
    if mask_values is None:
        return masks.any(axis=-1).astype(np.int64)
    missing = [v for v in mask_values if v not in numbers]
    if missing:
        raise DataError(f"mask_values {missing} are not segment numbers of {where} (it has "
                        f"segments {numbers}); list segment numbers in mask_values")
    planes = np.stack([masks[..., numbers.index(v)] for v in mask_values], axis=-1)
    shared = planes.sum(axis=-1) > 1
    if shared.any() and overlap == "error":
        pairs = sorted({(mask_values[a], mask_values[b]) for a in range(len(mask_values))
                        for b in range(a + 1, len(mask_values))
                        if (planes[..., a] & planes[..., b]).any()})
        raise DataError(
            f"segments overlap in {where}: {int(shared.sum())} pixel(s) belong to segments "
            f"{', '.join(f'{a} and {b}' for a, b in pairs)}, which are different classes. Set "
            "data.init_args.segment_overlap: first_listed to give such pixels the class listed "
            "first in mask_values, or fix the SEG")
    out = np.zeros(masks.shape[:2], dtype=np.int64)
    for k in range(len(mask_values), 0, -1):  # the first listed is written last: it wins
        out[planes[..., k - 1]] = k
    return out


def read_mask(path: str | Path, mask_values: list[int] | None = None,
              source: SourceImage | None = None, segment_overlap: SegmentOverlap = "error"
              ) -> np.ndarray:
    """Mask as HW int64 class indices; an unreadable mask is a :class:`DataError` naming it.

    Args:
        path: PNG/TIFF, .npy or DICOM SEG.
        mask_values: raw values (segment numbers for a SEG) of the foreground classes in class
            order; None: any non-zero value (any segment) is the one foreground class.
        source: the image the mask belongs to; picks a SEG's frames (see :func:`read_dicom_seg`).
        segment_overlap: what to do with SEG pixels in segments of two classes.
    """
    path = Path(path)
    try:
        if path.suffix.lower() == ".npy":
            raw = np.load(path, allow_pickle=False)
        elif is_dicom_file(path):
            masks, numbers = read_dicom_seg(path, source)
            where = f"DICOM SEG '{path}' for {source.describe() if source else 'its image'}"
            return encode_segments(masks, numbers, mask_values, segment_overlap, where)
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


def is_dicom_file(path: Path) -> bool:
    """Whether a file is a DICOM file by its ending (.dcm, .dicom) or 'DICM' after the preamble."""
    if path.suffix.lower() in (".dcm", ".dicom"):
        return True
    with path.open("rb") as f:
        f.seek(128)
        return f.read(4) == b"DICM"
