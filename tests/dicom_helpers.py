"""Writing small DICOM files with pydicom for tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom import uid
from pydicom.dataset import Dataset, FileMetaDataset

PATIENT = {
    "PatientName": "Doe^Janette",
    "PatientID": "PID-98765",
    "PatientBirthDate": "19700101",
    "AccessionNumber": "ACC-55555",
    "OtherPatientIDs": "OTHER-4242",
}


def write_dicom(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2",
                bits_stored: int | None = None, modality: str = "CT", **attrs) -> Path:
    """A minimal valid DICOM file (Explicit VR Little Endian) holding ``pixels``."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    ds.SOPClassUID = uid.CTImageStorage if modality == "CT" else uid.SecondaryCaptureImageStorage
    ds.Modality = modality
    ds.set_pixel_data(pixels, photometric, bits_stored or pixels.dtype.itemsize * 8)
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def patient_identity(i: int) -> dict[str, str]:
    """Distinctive identifiers for synthetic patient ``i`` (searched for in privacy tests)."""
    return {"PatientName": f"Testperson^Zelda{i:02d}", "PatientID": f"ZZPID{i:05d}",
            "PatientBirthDate": f"1931{(i % 12) + 1:02d}17", "AccessionNumber": f"ZZACC{i:05d}"}


def make_ct_study(root: Path, n_patients: int = 8, per_patient: int = 3, size: int = 32,
                  seed: int = 0) -> dict[str, Path]:
    """Synthetic CT slices with identifiers; 'contrast' patients have a bright round blob.

    Writes ``slices/p{i}_{j}.dcm`` (file names carry no identifier), PNG masks of the blob,
    ``labels.csv`` (path,label,patient_id) and ``masks.csv`` (path,mask,patient_id).
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "slices").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    labels, masks = ["path,label,patient_id"], ["path,mask,patient_id"]
    yy, xx = np.mgrid[:size, :size]
    for i in range(n_patients):
        contrast = i % 2 == 1
        who = patient_identity(i)
        for j in range(per_patient):
            hu = rng.normal(40, 20, (size, size))
            cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
            blob = (yy - cy) ** 2 + (xx - cx) ** 2 < (size // 6) ** 2
            if contrast:
                hu[blob] = 300
            stored = np.clip(hu + 1024, 0, 4095).astype(np.uint16)
            name = f"p{i}_{j}"
            write_dicom(root / "slices" / f"{name}.dcm", stored, bits_stored=12, RescaleSlope=1,
                        RescaleIntercept=-1024, PixelSpacing=[0.8, 0.8], WindowCenter=40,
                        WindowWidth=400, SOPInstanceUID=f"1.2.826.0.1.3680043.2.1125.{i}.{j}", **who)
            Image.fromarray((blob & contrast).astype(np.uint8) * 255).save(root / "masks" / f"{name}.png")
            labels.append(f"slices/{name}.dcm,{'contrast' if contrast else 'plain'},{who['PatientID']}")
            masks.append(f"slices/{name}.dcm,masks/{name}.png,{who['PatientID']}")
    (root / "labels.csv").write_text("\n".join(labels) + "\n")
    (root / "masks.csv").write_text("\n".join(masks) + "\n")
    return {"labels": root / "labels.csv", "masks": root / "masks.csv", "slices": root / "slices"}
