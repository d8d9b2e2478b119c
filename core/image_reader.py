"""The built-in reader of ordinary image files (PNG, JPEG, BMP, TIFF) for bundles."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from core.preprocess import IMAGE_EXTENSIONS, read_image_file
from core.readers import InputReader


class ImageReader(InputReader):
    """PIL-decoded images as gray or RGB, scaled to [0, 1] as training's evaluation did."""

    name = "image"
    extensions = IMAGE_EXTENSIONS

    def read(self, path: Path, contract: Mapping[str, Any]) -> np.ndarray:
        # A source that does not record its channels leaves them None: the count decides.
        channels = contract.get("channels") or ("gray" if contract["in_chans"] == 1 else "rgb")
        return read_image_file(path, channels)

    def card_scaling(self, contract: Mapping[str, Any]) -> str | None:
        # The base contract's integer scaling describes PIL images; other readers have their
        # own value ranges (modality LUT + window, raw band values).
        return contract.get("input_scaling") or None


IMAGE = ImageReader()
