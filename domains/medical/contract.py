"""The input contract of the DICOM reader: how training read DICOM files, for bundles.

Standard library only (no pydicom): the bundle predictor and ``bundle verify`` read it.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from core.contracts import InputContract

Frames = int | Literal["middle", "all"]
WindowSpec = str | tuple[float, float]
Windows = WindowSpec | tuple[WindowSpec, ...] | None

DICOM_SCALING = "modality LUT values (HU for CT); each window maps to [0, 1]"


def prediction_frame(frames: Frames) -> int | Literal["middle"]:
    """The frame a prediction reads: a model trained on every frame (``all``) of multi-frame
    files still predicts one image per file, its middle frame."""
    return "middle" if frames == "all" else frames


@dataclasses.dataclass(frozen=True, kw_only=True)
class DicomContract(InputContract):
    """DICOM files through training's path: modality LUT, window(s), frame and pixel spacing."""

    modality_lut: bool = True
    """Stored values go through the modality LUT (or rescale slope/intercept) first."""
    window: Windows = None
    """``file``, a preset, ``[center, width]``, a list of those (one channel each), or None
    (modality values)."""
    frames: Frames = "middle"
    """The frame of multi-frame files training read: an index, ``middle`` or ``all``."""
    target_spacing: float | None = None
    """Pixel spacing in mm the images were resampled to; None: as stored."""
    input_scaling: str | None = DICOM_SCALING

    @property
    def prediction_frame(self) -> int | Literal["middle"]:
        """The frame prediction reads (see :func:`prediction_frame`)."""
        return prediction_frame(self.frames)
