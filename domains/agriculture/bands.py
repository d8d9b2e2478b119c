"""Band handling shared by training and the torch-free predictor: selection, indices, reading."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from rasterio.windows import Window

from domains.agriculture.indices import check_indices, compute_indices
from domains.agriculture.raster import RasterStack


@dataclass
class BandSpec:
    """How to turn raster bands into network channels (shared by every agriculture datamodule)."""

    bands: list[str | int] | None = None
    band_names: list[str] | None = None
    band_roles: dict[str, str] | None = None
    nodata: float | None = None
    indices: list[str] = field(default_factory=list)

    def open(self, paths: str | Sequence[str]) -> RasterStack:
        stack = RasterStack(paths, self.bands, self.band_names, self.nodata)
        self.roles = check_indices(self.indices, stack.names, self.band_roles)
        return stack

    def channel_names(self, stack: RasterStack) -> list[str]:
        return [*stack.names, *[i.upper() for i in self.indices]]

    def read(self, stack: RasterStack, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """Channels (HWC float32, NaN where invalid) and the valid mask for a window."""
        image, valid = stack.read(window)
        if self.indices:
            image = np.concatenate([image, compute_indices(image, self.indices, self.roles)])
        return np.ascontiguousarray(image.transpose(1, 2, 0)), valid
