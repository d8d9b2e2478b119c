"""The built-in reader of ordinary image files (PNG, JPEG, BMP, TIFF) for bundles, and its contract."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from core.contracts import ContractError, InputContract
from core.preprocess import IMAGE_EXTENSIONS, Channels, read_image_file
from core.readers import InputReader

INTEGER_SCALING = "integer images scaled to [0, 1] as (x - dtype min) / (dtype max - dtype min)"


@dataclasses.dataclass(frozen=True, kw_only=True)
class ImageContract(InputContract):
    """Image files decoded by PIL as gray or RGB."""

    channels: Channels | None = None
    """What every image is converted to; None: gray for one input channel, else RGB."""
    input_scaling: str | None = INTEGER_SCALING

    def check(self) -> None:
        super().check()
        expected = {"gray": 1, "rgb": 3}.get(self.channels or "")
        if expected is not None and expected != self.in_chans:
            raise ContractError(f"input.channels '{self.channels}' gives {expected} channel(s), but "
                                f"input.in_chans is {self.in_chans}")

    @property
    def mode(self) -> Channels:
        """The channels images are converted to (given, or from the channel count)."""
        return self.channels or ("gray" if self.in_chans == 1 else "rgb")


class ImageReader(InputReader):
    """PIL-decoded images as gray or RGB, scaled to [0, 1] as training's evaluation did."""

    name = "image"
    extensions = IMAGE_EXTENSIONS
    contract_class = ImageContract

    def read(self, path: Path, contract: ImageContract) -> np.ndarray:
        return read_image_file(path, contract.mode)

    def card_channels(self, contract: ImageContract) -> str:
        return f"- **Channels**: {contract.in_chans}" + (f" ({contract.channels})" if contract.channels else "") + "."

    def card_scaling(self, contract: ImageContract) -> str | None:
        # Stated for images only: the other readers' value ranges (modality LUT + window, raw
        # band values) are part of their own card lines.
        return contract.input_scaling or None


IMAGE = ImageReader()
