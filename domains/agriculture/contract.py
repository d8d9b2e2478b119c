"""The input contracts of the GeoTIFF readers: which bands training read and how, for bundles.

Standard library only (no rasterio): the bundle predictor and ``bundle verify`` read them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from core.contracts import ContractError, InputContract

GEOTIFF_SCALING = "band values as stored in the GeoTIFF; nodata masked"


@dataclasses.dataclass(frozen=True, kw_only=True)
class GeoTiffPatchContract(InputContract):
    """GeoTIFF bands as training selected them, with its spectral indices and nodata."""

    bands: tuple[str, ...]
    """Names of the selected bands of the training file, in order: inputs must have these."""
    band_selection: tuple[str | int, ...] | None = None
    """The ``bands`` option as given (None: all), so prediction selects the same way."""
    band_names: tuple[str, ...] | None = None
    """Names given to the file's bands (the ``band_names`` option), if any."""
    file_band_count: int | None = None
    """Bands in the training file: tells B1 of a 1-band file from B1 of a 4-band one."""
    bands_named_by_position: bool = False
    """Whether the band names are B1..Bn from positions (the file described none)."""
    sensor: str | None = None
    """The sensor whose band numbers named the roles, if one was given."""
    band_roles: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """Role -> band name as resolved in training (never guessed again)."""
    band_roles_source: str = ""
    """Where the roles came from, in words."""
    nodata: float | None = None
    """Nodata value overriding the files' own."""
    indices: tuple[str, ...] = ()
    """Spectral indices appended as channels (upper case)."""
    channel_names: tuple[str, ...] = ()
    """The network's channel names: band roles or names, then the indices."""
    input_scaling: str | None = GEOTIFF_SCALING

    def check(self) -> None:
        super().check()
        if self.channel_names and len(self.channel_names) != self.in_chans:
            raise ContractError(f"input.channel_names has {len(self.channel_names)} name(s) for "
                                f"{self.in_chans} input channel(s)")
        if len(self.bands) + len(self.indices) != self.in_chans:
            raise ContractError(f"input.bands ({len(self.bands)}) and input.indices "
                                f"({len(self.indices)}) do not add up to in_chans {self.in_chans}")

    @classmethod
    def upgrade_1_0(cls, data: dict[str, Any]) -> dict[str, Any]:
        # Contracts from before `band_selection` selected the resolved band names.
        if "band_selection" not in data:
            data = {**data, "band_selection": data.get("bands")}
        return data


@dataclasses.dataclass(frozen=True, kw_only=True)
class GeoTiffSceneContract(GeoTiffPatchContract):
    """A whole scene cut into ``image_size`` tiles that overlap by ``predict_overlap`` pixels."""

    predict_overlap: int = 0
    """Overlap of neighbouring prediction tiles in pixels (blended)."""
    ignore_index: int = 255
    """Mask value of unlabelled and nodata pixels in training."""
    class_values: tuple[int, ...] = ()
    """Label raster codes of the classes, in class order."""

    def check(self) -> None:
        super().check()
        if not 0 <= self.predict_overlap < min(self.size):
            raise ContractError(f"input.predict_overlap {self.predict_overlap} must be at least 0 and "
                                f"smaller than the tile size {min(self.size)}")
        if self.class_values and len(self.class_values) != len(self.class_names):
            raise ContractError(f"input.class_values has {len(self.class_values)} code(s) for "
                                f"{len(self.class_names)} class name(s)")

    @property
    def tile_size(self) -> int:
        """Side of the square tiles a scene is cut into (the network input size)."""
        return self.size[0]

    @classmethod
    def upgrade_1_0(cls, data: dict[str, Any]) -> dict[str, Any]:
        # Schema 1.0 scene contracts carried the tile size as `tile_size` beside the base's
        # `image_size`; the scene reader read `tile_size`, so it wins.
        data = super().upgrade_1_0(data)
        if "tile_size" in data:
            data = {k: v for k, v in data.items() if k != "tile_size"} | {"image_size": data["tile_size"]}
        return data
