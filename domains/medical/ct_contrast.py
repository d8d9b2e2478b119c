"""The CT contrast sample (../shared/realdata/medical/ct_contrast): a manifest for it.

Used by the ``realdata`` tests and ``benchmarks/medical.py``; not needed to run the project.
"""

from __future__ import annotations

import csv
from pathlib import Path


def write_manifest(folder: str | Path, out: str | Path) -> Path:
    """``path,contrast`` rows (absolute paths) from the sample's overview.csv.

    Patients come from the DICOM headers (``patient_column: null``): the CSV has no patient
    column, and 100 slices belong to 54 patients.
    """
    folder, out = Path(folder), Path(out)
    with (folder / "overview.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "contrast"])
        for row in rows:
            writer.writerow([str(folder / "dicom_dir" / row["dicom_name"]), row["Contrast"]])
    return out
