"""What the medical domain contributes to core: its DICOM reader for bundles and its model card.

Imports neither torch nor pydicom: the bundle predictor carries this module, and core reads the
domain's extra from it when pydicom is missing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from core.plugins import DomainPlugin
from core.readers import InputReader, card_value
from domains.medical.contract import DicomContract

EXTRA = "medical"
DICOM_EXTENSIONS = (".dcm", ".dicom", ".ima", "")
# pydicom decodes compressed transfer syntaxes through these plug-ins.
_DICOM_DECODERS = ("python-gdcm", "pylibjpeg", "pylibjpeg-openjpeg", "pylibjpeg-rle")


class DicomReader(InputReader):
    """One DICOM image through training's path: modality LUT, window(s), frame, spacing."""

    name = "dicom"
    extensions = DICOM_EXTENSIONS
    extra = EXTRA
    packages = ("pydicom", *_DICOM_DECODERS)
    contract_class = DicomContract

    def read(self, path: Path, contract: DicomContract) -> np.ndarray:
        from domains.medical.dicom import read_dicom

        return read_dicom(path, window=contract.window, frame=contract.prediction_frame,
                          target_spacing=contract.target_spacing).image

    def input_keys(self, path: Path) -> dict[str, str]:
        from domains.medical.dicom import dicom_meta

        return {"sop_instance_uid": dicom_meta(path).get("SOPInstanceUID") or ""}

    def card_input(self, contract: DicomContract, size: str) -> list[str]:
        return [f"- **DICOM**: modality LUT {'on' if contract.modality_lut else 'off'}, "
                f"window(s) {card_value(contract.window)}, frames {card_value(contract.frames)}, "
                f"target spacing {card_value(contract.target_spacing)}.",
                *super().card_input(contract, size)]


DICOM = DicomReader()

PLUGIN = DomainPlugin(
    name="medical",
    extra=EXTRA,
    readers=(DICOM,),
    # A regulatory category, not this domain's name: a clone keeps the wording.
    card_limitations=("- **Not a medical device.** For research only; not validated for clinical "  # new-domain: keep
                      "use or diagnosis.",),
    tests=("test_medical.py", "test_medical_segmentation.py", "test_dicom.py",
           "test_medical_configs.py", "test_medical_detection.py"),
)
