"""The North Carolina Landsat 7 sample (../shared/realdata): band files and classes.

Used by the ``realdata`` tests and ``benchmarks/agriculture.py``; not needed to run the project.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# lsat7_2000_{10,20,30,40,50,70}.tif = Landsat 7 ETM+ bands 1, 2, 3, 4, 5, 7.
BAND_FILES = ["lsat7_2000_10.tif", "lsat7_2000_20.tif", "lsat7_2000_30.tif",
              "lsat7_2000_40.tif", "lsat7_2000_50.tif", "lsat7_2000_70.tif"]
BAND_NAMES = ["blue", "green", "red", "nir", "swir1", "swir2"]
# A land-cover class named like this domain: a clone keeps it.
CLASS_NAMES = ["developed", "agriculture", "herbaceous", "shrubland", "forest", "water", "sediment"]  # new-domain: keep
LABELS = "landsat96_labelled_pixels.tif"


def datamodule_args(folder: str | Path) -> dict[str, Any]:
    """Arguments of :class:`SceneSegmentationDataModule` for the sample in ``folder``."""
    folder = Path(folder)
    return {
        "image": [str(folder / f) for f in BAND_FILES],
        "band_names": BAND_NAMES,
        "labels": str(folder / LABELS),
        "class_values": list(range(1, 8)),
        "class_labels": CLASS_NAMES,
    }
