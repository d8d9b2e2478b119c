"""ELPV: 2,624 electroluminescence images of solar cells (the ``elpv-dataset`` package)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np

from core.data import ConvNeXtDataModule, DataError, ImageFileSource

# The four defect probabilities annotated by the ELPV experts, as class names.
FOUR_CLASSES = ["functional", "possibly_defective", "likely_defective", "defective"]
BINARY_CLASSES = ["functional", "defective"]


def elpv_records() -> tuple[list[Path], np.ndarray, list[str]]:
    """(image paths, defect probabilities, cell types) from the installed ``elpv-dataset``."""
    try:
        import elpv_dataset
    except ImportError as err:
        raise DataError(
            "the ELPV demo data comes from the optional 'elpv-dataset' package (CC BY-NC-SA 4.0): "
            "pip install 'convnext-domains[demo]'"
        ) from err
    labels = Path(elpv_dataset.__file__).parent / "data" / "labels.csv"
    paths, probs, types = [], [], []
    for line in labels.read_text().splitlines():
        if line.strip():
            name, prob, kind = line.split()
            paths.append(labels.parent / name)
            probs.append(float(prob))
            types.append(kind)
    return paths, np.asarray(probs), types


class ELPVDataModule(ConvNeXtDataModule):
    """The ELPV solar-cell defect data set with the paper's protocol.

    Default protocol: 25% stratified test split (by defect probability and cell type, seeded);
    validation (``val_fraction`` of all cells) carved from the remaining 75%.

    Args:
        label_mode: ``binary`` (defective = probability >= 0.5) or ``4class`` (the four levels).
        cell_type: ``all``, ``mono`` or ``poly`` crystalline cells.
        val_fraction: share of all cells used for validation, taken from the training part.
        test_fraction: share of all cells held out for testing.
        **kwargs: options of :class:`~core.data.ConvNeXtDataModule`.
    """

    def __init__(
        self,
        label_mode: Literal["binary", "4class"] = "binary",
        cell_type: Literal["all", "mono", "poly"] = "all",
        val_fraction: float = 0.1,
        test_fraction: float = 0.25,
        **kwargs: Any,
    ) -> None:
        super().__init__(val_fraction=val_fraction, test_fraction=test_fraction, **kwargs)

    def build_source(self) -> ImageFileSource:
        """The cells of ``cell_type``, stratified by defect level and cell type."""
        paths, probs, types = elpv_records()
        keep = [i for i, t in enumerate(types) if self.hparams.cell_type in ("all", t)]
        levels = np.rint(probs[keep] * 3).astype(int)  # 0, 1/3, 2/3, 1 -> 0..3
        if self.hparams.label_mode == "binary":
            labels, classes = (probs[keep] >= 0.5).astype(int), BINARY_CLASSES
        else:
            labels, classes = levels, FOUR_CLASSES
        kinds = [types[i] for i in keep]
        return ImageFileSource([paths[i] for i in keep], labels, channels="gray", class_names=classes,
                               strata=[f"{level}-{kind}" for level, kind in zip(levels, kinds, strict=True)])

    @property
    def positive_classes(self) -> list[str]:
        return ["defective"] if self.hparams.label_mode == "binary" else FOUR_CLASSES[2:]

    def predict_source(self, paths: list[Path]) -> ImageFileSource:
        return ImageFileSource(paths, np.zeros(len(paths), dtype=int), channels="gray")
