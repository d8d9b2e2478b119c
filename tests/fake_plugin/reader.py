"""A reader of ``.npy`` arrays, plugged into bundle export and prediction without editing core."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from core.contracts import InputContract
from core.errors import DataError
from core.readers import InputReader


class NpyReader(InputReader):
    """HWC arrays saved with ``numpy.save``, used as they are (no value scaling)."""

    name = "tests.fake_plugin.reader:NPY"
    extensions = (".npy",)

    def read(self, path: Path, contract: InputContract) -> np.ndarray:
        array = np.load(path, allow_pickle=False)
        if array.ndim != 3 or array.shape[2] != contract.in_chans:
            raise DataError(f"'{path}' holds an array of shape {array.shape}; save an HWC array "
                            f"with {contract.in_chans} channels")
        return array.astype(np.float32)

    def card_scaling(self, contract: InputContract) -> str | None:
        return "array values used as saved"


NPY = NpyReader()
