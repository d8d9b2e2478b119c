"""DICOM pixel reading with pydicom: modality LUT, windowing, colour, frames and pixel spacing.

Like every domain reader (see :mod:`core.data`), :func:`read_dicom` returns HWC float32. All
pixel transforms are pydicom's own (decoders, ``apply_modality_lut``, ``apply_windowing``,
``apply_voi``, ``apply_color_lut``, YBR->RGB in ``pixel_array``); this module only chooses which
to apply and maps their output ranges to [0, 1].

Privacy: patient identifiers (:data:`PATIENT_IDENTIFIER_TAGS`) never leave this module. The
returned objects, log messages and errors carry the file path, the image's SOP Instance UID and
technical header fields only; library messages quoted in errors are scrubbed of the file's
identifier values first.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pydicom
from pydicom import uid as dcm_uid
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import (
    apply_color_lut,
    apply_modality_lut,
    apply_voi,
    apply_windowing,
    get_decoder,
    pixel_array,
)
from pydicom.pixels.utils import get_nr_frames
from pydicom.sequence import Sequence as SequenceOfItems
from pydicom.valuerep import DSfloat

from core.errors import DataError
from core.preprocess import resize_image

log = logging.getLogger(__name__)

__all__ = [
    "DECODER_PACKAGES",
    "PATIENT_IDENTIFIER_TAGS",
    "WINDOW_PRESETS",
    "DicomImage",
    "count_frames",
    "dicom_meta",
    "parse_windows",
    "read_dicom",
]

#: Keywords of attributes that identify a patient (directly, or as quasi-identifiers). Their
#: values must never be written to a returned object, a log, an error message or a manifest.
PATIENT_IDENTIFIER_TAGS: frozenset[str] = frozenset({
    "PatientName", "PatientID", "IssuerOfPatientID", "OtherPatientIDs", "OtherPatientIDsSequence",
    "OtherPatientNames", "PatientBirthName", "PatientMotherBirthName", "PatientBirthDate",
    "PatientBirthTime", "PatientAddress", "PatientTelephoneNumbers", "PatientTelecomInformation",
    "AccessionNumber", "MedicalRecordLocator", "PatientInsurancePlanCodeSequence",
    "PatientReligiousPreference", "PatientComments", "MilitaryRank", "BranchOfService",
    "CountryOfResidence", "RegionOfResidence", "EthnicGroup", "ResponsiblePerson",
    "ResponsibleOrganization", "PersonName", "AdmissionID", "PatientAge", "PatientSex",
    "PatientSize", "PatientWeight", "PatientState",
})

#: Named CT windows as (center, width) in Hounsfield units (common radiology values).
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
    "abdomen": (50.0, 400.0),
    "soft_tissue": (40.0, 400.0),
    "liver": (30.0, 150.0),
    "stroke": (40.0, 40.0),
}

#: Compressed transfer syntax -> pip packages that provide a pydicom decoder for it (any one
#: alternative suffices). Native syntaxes, deflate and RLE need nothing beyond pydicom.
DECODER_PACKAGES: dict[str, tuple[str, ...]] = {
    dcm_uid.JPEGBaseline8Bit: ("python-gdcm", "pylibjpeg pylibjpeg-libjpeg"),
    # gdcm and Pillow refuse 12-bit JPEG; only libjpeg (GPL-3.0) decodes it.
    dcm_uid.JPEGExtended12Bit: ("pylibjpeg pylibjpeg-libjpeg",),
    dcm_uid.JPEGLossless: ("python-gdcm", "pylibjpeg pylibjpeg-libjpeg"),
    dcm_uid.JPEGLosslessSV1: ("python-gdcm", "pylibjpeg pylibjpeg-libjpeg"),
    dcm_uid.JPEGLSLossless: ("python-gdcm", "pylibjpeg pylibjpeg-libjpeg", "pyjpegls"),
    dcm_uid.JPEGLSNearLossless: ("python-gdcm", "pylibjpeg pylibjpeg-libjpeg", "pyjpegls"),
    dcm_uid.JPEG2000Lossless: ("pylibjpeg pylibjpeg-openjpeg", "python-gdcm"),
    dcm_uid.JPEG2000: ("pylibjpeg pylibjpeg-openjpeg", "python-gdcm"),
    dcm_uid.HTJ2KLossless: ("pylibjpeg pylibjpeg-openjpeg",),
    dcm_uid.HTJ2KLosslessRPCL: ("pylibjpeg pylibjpeg-openjpeg",),
    dcm_uid.HTJ2K: ("pylibjpeg pylibjpeg-openjpeg",),
    dcm_uid.RLELossless: ("pylibjpeg pylibjpeg-rle",),
}
MEDICAL_EXTRA = "pip install 'convnext-domains[medical]'"

Frame = int | Literal["all", "middle"]
WindowSpec = str | tuple[float, float] | None

_PIXEL_DATA_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# Attributes that shape the pixel values of one frame; nothing identifying.
_FRAME_KEYWORDS = (
    "PhotometricInterpretation", "SamplesPerPixel", "BitsAllocated", "BitsStored", "HighBit",
    "PixelRepresentation", "RescaleSlope", "RescaleIntercept", "RescaleType",
    "ModalityLUTSequence", "WindowCenter", "WindowWidth", "VOILUTFunction", "VOILUTSequence",
    "PixelSpacing", "ImagerPixelSpacing",
)
# Enhanced multi-frame objects (PS3.3 C.7.6.16) keep rescale, window and spacing in these
# functional-group macros instead of the top level.
_FRAME_MACROS = ("PixelMeasuresSequence", "PixelValueTransformationSequence", "FrameVOILUTSequence")
_UNDEFINED_LENGTH = 0xFFFFFFFF


@dataclass(frozen=True)
class _Window:
    """One output channel: a (center, width) window, or the file's own (center is None)."""

    name: str
    center: float | None = None
    width: float | None = None


@dataclass(frozen=True, eq=False, repr=False)
class DicomImage:
    """Pixels of one DICOM file and the non-identifying facts needed to use them.

    Attributes:
        image: HWC float32 (``frame`` int or "middle"), or FHWC float32 (``frame="all"``).
        sop_instance_uid: the image's SOP Instance UID (a unique, non-patient key).
        modality: e.g. "CT", "MR", "US" ("" when absent).
        photometric: Photometric Interpretation as stored in the file (before any conversion).
        num_frames: frames in the file.
        frame: 0-based index of the returned frame; None when all frames are returned.
        pixel_spacing: (row, column) spacing in mm of the returned pixels (after resampling),
            None when the file has none.
        channel_names: one name per channel: window names, "value" (no window) or red/green/blue.
        transfer_syntax_uid: the file's transfer syntax.
    """

    image: np.ndarray
    sop_instance_uid: str
    modality: str
    photometric: str
    num_frames: int
    frame: int | None
    pixel_spacing: tuple[float, float] | None
    channel_names: tuple[str, ...]
    transfer_syntax_uid: str

    def __repr__(self) -> str:
        # Summarise the array: a full numpy repr would flood logs.
        return (f"DicomImage(image={tuple(self.image.shape)} {self.image.dtype}, "
                f"sop_instance_uid={self.sop_instance_uid!r}, modality={self.modality!r}, "
                f"photometric={self.photometric!r}, num_frames={self.num_frames}, "
                f"frame={self.frame}, pixel_spacing={self.pixel_spacing}, "
                f"channel_names={self.channel_names}, "
                f"transfer_syntax_uid={self.transfer_syntax_uid!r})")


# ---- window option ---------------------------------------------------------------------------
def _is_pair(value: Any) -> bool:
    return (isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value))


def _one_window(spec: Any) -> _Window:
    if isinstance(spec, str):
        name = spec.strip().lower()
        if name == "file":
            return _Window("file")
        if name in WINDOW_PRESETS:
            return _Window(name, *WINDOW_PRESETS[name])
    elif _is_pair(spec):
        center, width = float(spec[0]), float(spec[1])
        if not (math.isfinite(center) and math.isfinite(width)) or width < 1:
            raise DataError(f"window {list(spec)} is invalid: give [center, width] with a finite "
                            "center and width >= 1 (DICOM linear windowing)")
        return _Window(f"c{center:g}_w{width:g}", center, width)
    raise DataError(
        f"unknown window {spec!r}: use none, file, a preset ({', '.join(WINDOW_PRESETS)}), a "
        "[center, width] pair, or a list of these (one channel each)"
    )


def parse_windows(window: WindowSpec | Sequence[WindowSpec]) -> list[_Window] | None:
    """Normalise the ``window`` option of :func:`read_dicom`.

    Args:
        window: None or "none"; "file"; a preset name; a (center, width) pair; or a list of
            "file"/presets/pairs, one output channel each.

    Returns:
        None for raw modality values, else one window per output channel.
    """
    if window is None or (isinstance(window, str) and window.strip().lower() == "none"):
        return None
    if isinstance(window, str) or _is_pair(window):
        return [_one_window(window)]
    if isinstance(window, Sequence) and len(window) > 0:
        return [_one_window(w) for w in window]
    raise DataError(f"window {window!r} is empty or not understood: use none, file, a preset, "
                    "a [center, width] pair or a list of these")


# ---- privacy ---------------------------------------------------------------------------------
def _identifier_values(ds: Dataset) -> list[str]:
    """The file's identifier values as text, longest first (for scrubbing messages)."""
    found: set[str] = set()
    for keyword in PATIENT_IDENTIFIER_TAGS:
        tag = tag_for_keyword(keyword)
        if tag is None or tag not in ds:
            continue
        # Read the raw value: converting the element would run pydicom's value validation,
        # which logs invalid values verbatim.
        value = ds.get_item(tag).value
        if isinstance(value, bytes):
            texts = {value.decode("latin-1", "ignore"), value.decode("utf-8", "ignore")}
        elif isinstance(value, MultiValue):
            texts = {str(v) for v in value}
        elif value is None or isinstance(value, SequenceOfItems):
            continue
        else:  # str, or a PersonName if someone converted the element already
            texts = {str(value)}
        for text in texts:
            # Also the parts of names (family^given) and of multi-valued elements.
            parts = [text, *re.split(r"[\\^=]", text)]
            found.update(p.strip() for p in parts if len(p.strip()) >= 3)
    return sorted(found, key=len, reverse=True)


def _scrub(message: str, ds: Dataset | None) -> str:
    if ds is not None:
        for value in _identifier_values(ds):
            message = message.replace(value, "[redacted]")
    return message


# ---- reading the file ------------------------------------------------------------------------
def _read(path: str | Path, pixels: bool, force: bool) -> Dataset:
    file = Path(path).expanduser()
    if not file.is_file():
        what = ("is a directory; list the DICOM files inside it" if file.is_dir()
                else "does not exist; fix the path or remove it from the list")
        raise DataError(f"DICOM file '{path}' {what}")
    try:
        ds = pydicom.dcmread(file, stop_before_pixels=not pixels, force=force)
    except InvalidDicomError:
        raise DataError(
            f"'{path}' is not a DICOM file (no 'DICM' marker after the 128-byte preamble): remove "
            "it from the list, or pass force=True if it is a DICOM file without file meta header"
        ) from None
    except OSError as err:
        raise DataError(f"cannot read '{path}' ({err.strerror or err}); check the file") from None
    except Exception as err:  # pydicom raises many types on a corrupt header
        # Only the type: the library text could quote header values.
        raise DataError(
            f"cannot parse the DICOM header of '{path}' ({type(err).__name__}); the file is "
            "corrupt or truncated: replace it (pydicom.dcmread shows the details)"
        ) from None
    if "TransferSyntaxUID" not in ds.file_meta:
        # Headerless (force=True) or sloppy files: the encoding pydicom detected while parsing
        # is the transfer syntax of the pixel data too.
        implicit, little = ds.original_encoding
        if implicit is None:
            raise DataError(f"'{path}' has no Transfer Syntax UID and its encoding is unknown; "
                            "rewrite it with a file meta header (e.g. dcmconv)")
        ds.file_meta.TransferSyntaxUID = (
            dcm_uid.ImplicitVRLittleEndian if implicit
            else dcm_uid.ExplicitVRLittleEndian if little else dcm_uid.ExplicitVRBigEndian
        )
        log.debug("'%s' has no Transfer Syntax UID; using %s", path,
                  ds.file_meta.TransferSyntaxUID.name)
    return ds


def _truncated(ds: Dataset) -> bool:
    """Whether the last element read holds fewer bytes than its header declares.

    pydicom stops quietly at the end of a short file, so this is the only sign of truncation
    before decoding.
    """
    if not len(ds):
        return False
    element = ds.get_item(max(ds.keys()))
    value, length = getattr(element, "value", None), getattr(element, "length", None)
    return (isinstance(value, bytes) and isinstance(length, int)
            and length != _UNDEFINED_LENGTH and len(value) < length)


def _num_frames(ds: Dataset, path: str | Path) -> int:
    try:
        return int(get_nr_frames(ds, warn=False))
    except (TypeError, ValueError):
        raise DataError(f"'{path}' has an invalid NumberOfFrames value; fix or replace the "
                        "file") from None


def _transfer_syntax(ds: Dataset) -> dcm_uid.UID:
    return ds.file_meta.TransferSyntaxUID


def _missing_decoder_message(path: str | Path, ts: dcm_uid.UID) -> str:
    options = " or ".join(f"pip install {p}" for p in DECODER_PACKAGES.get(ts, ()))
    return (f"cannot decode '{path}': its pixel data is compressed as {ts.name} ({ts}) and no "
            f"decoder for it is installed; install one: {MEDICAL_EXTRA}"
            + (f" (or directly: {options})" if options else ""))


def _decode(ds: Dataset, path: str | Path, index: int | None) -> np.ndarray:
    ts = _transfer_syntax(ds)
    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        raise DataError(
            f"cannot decode '{path}': pydicom has no decoder for its transfer syntax {ts.name} "
            f"({ts}); convert the file to an uncompressed syntax (e.g. gdcmconv --raw, or "
            "dcmdjpeg/dcmdrle from dcmtk)"
        ) from None
    if not decoder.is_available:
        raise DataError(_missing_decoder_message(path, ts))
    try:
        return pixel_array(ds, index=index)
    except Exception as err:  # decoders raise many types; the user needs the file and the fix
        detail = _scrub(str(err), ds)
        if isinstance(err, ValueError) and "less than expected" in detail:
            raise DataError(f"'{path}' is truncated ({detail.split(' - ')[0]}); replace it "
                            "with a complete copy") from None
        if "all available plugins" in detail:
            others = [p for p in DECODER_PACKAGES.get(ts, ())
                      if p.split()[-1].removeprefix("python-") not in decoder.available_plugins]
            hint = (" or try another decoder: " + " or ".join(f"pip install {p}" for p in others)
                    if others else "")
            raise DataError(
                f"cannot decode the {ts.name} pixel data of '{path}' with the installed decoders "
                f"({', '.join(decoder.available_plugins)}): {detail}\nThe file may be corrupt: "
                f"replace it{hint}"
            ) from None
        raise DataError(f"cannot decode the pixel data of '{path}' ({type(err).__name__}: "
                        f"{detail}); the file is corrupt or unsupported: replace it") from None


# ---- per-frame attributes --------------------------------------------------------------------
def _frame_view(ds: Dataset, index: int) -> Dataset:
    """The attributes that shape frame ``index``'s values, with functional groups applied."""
    view = Dataset()
    for keyword in _FRAME_KEYWORDS:
        if keyword in ds:
            view.add(ds[keyword])
    for sequence, item in (("SharedFunctionalGroupsSequence", 0),
                           ("PerFrameFunctionalGroupsSequence", index)):
        groups = ds.get(sequence)
        if not groups or item >= len(groups):
            continue
        for macro in _FRAME_MACROS:
            if groups[item].get(macro):
                for element in groups[item][macro][0]:
                    view.add(element)
    # apply_voi needs the byte order of OW lookup tables.
    view.file_meta = ds.file_meta
    return view


def _spacing(view: Dataset) -> tuple[float, float] | None:
    """(row, column) mm: PixelSpacing, else ImagerPixelSpacing (at the detector, projection images)."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = view.get(keyword)
        if value is not None and len(value) == 2 and all(float(v) > 0 for v in value):
            return float(value[0]), float(value[1])
    return None


def _first(value: Any) -> float:
    return float(value[0]) if isinstance(value, Sequence) and not isinstance(value, str) else float(value)


def _modality_range(view: Dataset, values: np.ndarray) -> tuple[float, float]:
    """Range of modality values, by the same rule pydicom's windowing uses for its output."""
    if view.get("ModalityLUTSequence"):
        return 0.0, float(2 ** int(view.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    if "BitsStored" not in view:  # float pixel data: no stored range
        return float(values.min()), float(values.max())
    bits = int(view.BitsStored)
    if int(view.get("PixelRepresentation", 0)) == 1:
        low, high = -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1
    else:
        low, high = 0.0, 2.0**bits - 1
    if "RescaleSlope" in view and "RescaleIntercept" in view:
        slope, intercept = float(view.RescaleSlope), float(view.RescaleIntercept)
        low, high = sorted((low * slope + intercept, high * slope + intercept))
    return low, high


# ---- windowing -------------------------------------------------------------------------------
def _linear_window(values: np.ndarray, center: float, width: float, function: str,
                   path: str | Path) -> np.ndarray:
    """A window mapped onto [0, 1] (PS3.3 C.11.2.1.2 and C.11.2.1.3)."""
    if function in ("LINEAR", "LINEAR_EXACT"):
        return _clip_window(values, center, width, function, path)
    voi = Dataset()
    voi.PhotometricInterpretation = "MONOCHROME2"
    # pydicom maps a window onto the range of the stored bits; one unsigned bit makes that
    # range exactly [0, 1], so its formula (PS3.3 C.11.2.1.2) is used unchanged.
    voi.BitsStored = 1
    voi.PixelRepresentation = 0
    voi.WindowCenter = DSfloat(center, auto_format=True)
    voi.WindowWidth = DSfloat(width, auto_format=True)
    voi.VOILUTFunction = function
    try:
        return apply_windowing(values, voi)
    except ValueError as err:
        raise DataError(f"cannot window '{path}' ({err}); choose another window (a preset or "
                        "[center, width])") from None


def _clip_window(values: np.ndarray, center: float, width: float, function: str,
                 path: str | Path) -> np.ndarray:
    """LINEAR / LINEAR_EXACT windows as one clipped affine map in float32.

    The standard's piecewise rule (0 at or below ``c - w/2``, 1 above ``c + w/2``, linear
    between, with ``c - 0.5`` and ``w - 1`` for LINEAR) is exactly ``clip((x - c) / w + 0.5, 0,
    1)``; one pass in float32 instead of pydicom's float64 copy and three boolean masks is the
    windowing cost of the DICOM pipeline (benchmarks/pipelines.py). Modality values are exact in
    float32 up to 2**24, so outputs differ from the float64 formula by float rounding only.
    """
    c, w = float(center), float(width)
    if function == "LINEAR":
        if w < 1:
            raise DataError(f"cannot window '{path}' (a LINEAR window width must be >= 1, got {w:g}); "
                            "choose another window (a preset or [center, width])")
        c, w = c - 0.5, w - 1.0
    elif w <= 0:
        raise DataError(f"cannot window '{path}' (a LINEAR_EXACT window width must be > 0, got "
                        f"{w:g}); choose another window (a preset or [center, width])")
    x = np.asarray(values, dtype=np.float32)
    if w == 0:  # LINEAR of width 1: a step at the centre
        return (x > np.float32(c)).astype(np.float32)
    out = (x - np.float32(c)) * np.float32(1.0 / w)
    out += np.float32(0.5)
    return np.clip(out, 0.0, 1.0, out=out)


def _file_window(values: np.ndarray, view: Dataset, path: str | Path) -> np.ndarray:
    """The file's own VOI: its VOI LUT if present (pydicom's preference), else its first window."""
    if view.get("VOILUTSequence"):
        depth = int(view.VOILUTSequence[0].LUTDescriptor[2])
        # LUT inputs are integer modality values; rescaled arrays arrive as floats.
        out = apply_voi(np.rint(values).astype(np.int64), view)
        return out.astype(np.float64) / (2**depth - 1)
    if "WindowCenter" in view and "WindowWidth" in view:
        function = str(view.get("VOILUTFunction", "") or "LINEAR").upper()
        return _linear_window(values, _first(view.WindowCenter), _first(view.WindowWidth),
                              function, path)
    raise DataError(f"'{path}' has no window (WindowCenter/WindowWidth) or VOI LUT, so window "
                    "'file' cannot be used: choose a preset (e.g. soft_tissue), a [center, width] "
                    "pair or window: none")


# ---- resampling ------------------------------------------------------------------------------
def _target_pair(target: float | Sequence[float], path: str | Path) -> tuple[float, float]:
    pair = (target, target) if isinstance(target, int | float) else tuple(target)
    if len(pair) != 2 or not all(isinstance(v, int | float) and math.isfinite(v) and v > 0
                                 for v in pair):
        raise DataError(f"target_spacing {target!r} is invalid for '{path}': give a positive "
                        "spacing in mm, or a [row, column] pair")
    return float(pair[0]), float(pair[1])


def _resample(array: np.ndarray, spacing: tuple[float, float], target: tuple[float, float]
              ) -> tuple[np.ndarray, tuple[float, float]]:
    """Resample FHWC ``array`` from ``spacing`` to ``target`` mm pixels.

    Bilinear (PIL, antialiased when shrinking): a convex combination of neighbours, so values
    stay inside the input range (no overshoot for windowing to clip) and downsampling does not
    alias. numpy/PIL only, so the torch-free predictor resamples identically.
    """
    frames, height, width, channels = array.shape
    new_h = max(1, round(height * spacing[0] / target[0]))
    new_w = max(1, round(width * spacing[1] / target[1]))
    if (new_h, new_w) == (height, width):
        return array, spacing
    out = np.stack([resize_image(np.ascontiguousarray(f, dtype=np.float32), (new_h, new_w)) for f in array])
    # The spacing actually reached: sizes are whole pixels.
    return out, (height * spacing[0] / new_h, width * spacing[1] / new_w)


# ---- public API ------------------------------------------------------------------------------
def _frame_indices(frame: Frame, count: int, path: str | Path) -> list[int]:
    if frame == "all":
        return list(range(count))
    if frame == "middle":
        return [count // 2]
    if isinstance(frame, int | np.integer) and not isinstance(frame, bool):
        if -count <= int(frame) < count:
            return [int(frame) % count]
        raise DataError(f"frame {frame} is out of range: '{path}' has {count} frame(s) "
                        f"(0..{count - 1}); use an index in range, 'middle' or 'all'")
    raise DataError(f"frame must be an integer index, 'middle' or 'all', not {frame!r}")


def _to_image(ds: Dataset, arr: np.ndarray, indices: list[int], windows: list[_Window] | None,
              target: tuple[float, float] | None, path: str | Path
              ) -> tuple[np.ndarray, tuple[float, float] | None, tuple[str, ...]]:
    """Decoded FHWS stored values -> (FHWC float32 image, its spacing, channel names)."""
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    colour = arr.shape[-1] == 3 or photometric == "PALETTE COLOR"
    views = [_frame_view(ds, i) for i in indices]
    spacing = _spacing(views[0])
    if target is not None and spacing is None:
        raise DataError(f"'{path}' has no PixelSpacing or ImagerPixelSpacing, so it cannot be "
                        "resampled to a target spacing: set target_spacing: null")

    if colour:
        if photometric == "PALETTE COLOR":
            rgb = apply_color_lut(arr[..., 0], ds)[..., :3]
            scale = float(np.iinfo(rgb.dtype).max)
        else:
            rgb = arr
            scale = float(2 ** int(ds.get("BitsStored", 8 * rgb.dtype.itemsize)) - 1)
        image = rgb.astype(np.float32) / np.float32(scale)
        if target is not None:
            image, spacing = _resample(image, spacing, target)
        names: tuple[str, ...] = ("red", "green", "blue")
    else:
        values = np.stack([np.asarray(apply_modality_lut(a, v), dtype=np.float64)
                           for a, v in zip(arr[..., 0], views, strict=True)])[..., None]
        if target is not None:
            values, spacing = _resample(values, spacing, target)
        values = values[..., 0]
        inverted = [str(v.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1"
                    for v in views]
        frames_out = []
        for vals, view, invert in zip(values, views, inverted, strict=True):
            if windows is None:
                if invert:
                    low, high = _modality_range(view, vals)
                    vals = low + high - vals
                channels = [vals]
            else:
                channels = [
                    _file_window(vals, view, path) if w.center is None
                    else _linear_window(vals, w.center, w.width, "LINEAR", path)
                    for w in windows
                ]
                if invert:
                    channels = [1.0 - c for c in channels]
            frames_out.append(np.stack(channels, axis=-1))
        image = np.stack(frames_out).astype(np.float32)
        names = ("value",) if windows is None else tuple(w.name for w in windows)

    return image, spacing, names


def read_dicom(
    path: str | Path,
    window: WindowSpec | Sequence[WindowSpec] = None,
    frame: Frame = "middle",
    target_spacing: float | Sequence[float] | None = None,
    force: bool = False,
) -> DicomImage:
    """Read the pixels of one DICOM file as float32 channels-last arrays.

    Grayscale (MONOCHROME1/2): stored values -> modality LUT or RescaleSlope/Intercept (HU for
    CT) -> optional resampling -> windows. MONOCHROME1 is inverted, so higher is always
    brighter. Colour (RGB, YBR_* converted to RGB by pydicom, PALETTE COLOR via its LUT):
    3 channels scaled to [0, 1] by the stored bit depth; windows do not apply.

    Args:
        path: the DICOM file.
        window: None/"none": one channel of modality values (HU for CT; not scaled, the
            datamodule's normalisation statistics take care of scale); "file": the file's VOI
            LUT, else its first WindowCenter/WindowWidth (with its VOILUTFunction); a preset
            from :data:`WINDOW_PRESETS`; a (center, width) pair; or a list of these, one
            channel each (e.g. ["lung", "mediastinum", "bone"]). Windows give [0, 1] by the
            DICOM linear formula (pydicom's ``apply_windowing``).
        frame: 0-based frame index (negative counts from the end), "middle" (frame
            ``num_frames // 2``; the only frame of single-frame files) or "all".
        target_spacing: resample to this pixel spacing in mm (one value, or (row, column)),
            using PixelSpacing, else ImagerPixelSpacing; None keeps the stored grid.
        force: read files without a DICOM file meta header (pydicom ``force=True``).

    Returns:
        A :class:`DicomImage`; ``image`` is HWC, or FHWC for ``frame="all"``.

    Raises:
        DataError: naming the file and the fix, for a missing or non-DICOM file, no pixel
            data, a truncated file, a missing decoder, a colour image with windows, or a
            frame out of range.
    """
    windows = parse_windows(window)  # config errors before any I/O
    target = None if target_spacing is None else _target_pair(target_spacing, path)
    ds = _read(path, pixels=True, force=force)
    if not any(keyword in ds for keyword in _PIXEL_DATA_KEYWORDS):
        if _truncated(ds):
            raise DataError(f"'{path}' is truncated (it ends inside a header element); replace "
                            "it with a complete copy")
        sop_class = ds.get("SOPClassUID")
        kind = f" (SOP class {sop_class.name})" if sop_class else ""
        raise DataError(f"'{path}' has no pixel data{kind}: it is not an image or it is "
                        "truncated; remove it from the list or replace it")
    if _truncated(ds):
        raise DataError(f"'{path}' is truncated (its pixel data is shorter than declared); "
                        "replace it with a complete copy")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    colour = int(ds.get("SamplesPerPixel", 1)) == 3 or photometric == "PALETTE COLOR"
    if colour and windows is not None:
        raise DataError(f"'{path}' is a colour image ({photometric}); windows apply to "
                        "MONOCHROME1/2 images only: set window: none for colour data")
    count = _num_frames(ds, path)
    indices = _frame_indices(frame, count, path)
    arr = _decode(ds, path, None if frame == "all" else indices[0])
    # Frames first and samples last, however many of each (pydicom drops length-1 axes).
    arr = arr.reshape(len(indices), int(ds.Rows), int(ds.Columns), -1)
    try:
        image, spacing, names = _to_image(ds, arr, indices, windows, target, path)
    except DataError:
        raise
    except Exception as err:  # malformed LUTs or rescale values deep inside pydicom/numpy
        raise DataError(
            f"cannot convert the pixel values of '{path}' ({type(err).__name__}: "
            f"{_scrub(str(err), ds)}); its image attributes (rescale, LUTs, windows) are "
            "malformed: fix or replace the file"
        ) from None
    image = np.ascontiguousarray(image, dtype=np.float32)
    return DicomImage(
        image=image if frame == "all" else image[0],
        sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
        modality=str(ds.get("Modality", "")),
        photometric=photometric,
        num_frames=count,
        frame=None if frame == "all" else indices[0],
        pixel_spacing=spacing,
        channel_names=names,
        transfer_syntax_uid=str(_transfer_syntax(ds)),
    )


def count_frames(path: str | Path, force: bool = False) -> int:
    """Frames in a DICOM file, from the header only (cheap: pixel data is not read).

    Args:
        path: the DICOM file.
        force: read files without a DICOM file meta header.
    """
    return _num_frames(_read(path, pixels=False, force=force), path)


def dicom_meta(path: str | Path, force: bool = False) -> dict[str, Any]:
    """Non-identifying header fields for manifests, read without the pixel data.

    Args:
        path: the DICOM file.
        force: read files without a DICOM file meta header.

    Returns:
        SOPInstanceUID, Modality, Rows, Columns, NumberOfFrames, PixelSpacing ([row, column] mm,
        also from functional groups or ImagerPixelSpacing), PhotometricInterpretation and
        TransferSyntaxUID as plain str/int/float values; None where absent.
    """
    ds = _read(path, pixels=False, force=force)

    def text(keyword: str) -> str | None:
        value = ds.get(keyword)
        return str(value) if value not in (None, "") else None

    try:
        spacing = _spacing(_frame_view(ds, 0))
        return {
            "SOPInstanceUID": text("SOPInstanceUID"),
            "Modality": text("Modality"),
            "Rows": int(ds.Rows) if "Rows" in ds else None,
            "Columns": int(ds.Columns) if "Columns" in ds else None,
            "NumberOfFrames": _num_frames(ds, path),
            "PixelSpacing": list(spacing) if spacing else None,
            "PhotometricInterpretation": text("PhotometricInterpretation"),
            "TransferSyntaxUID": str(_transfer_syntax(ds)),
        }
    except (TypeError, ValueError) as err:
        raise DataError(f"'{path}' has a malformed image header value ({type(err).__name__}); "
                        "fix or replace the file") from None
