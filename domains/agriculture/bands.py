"""Band handling shared by training and the torch-free predictor: selection, indices, reading."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from rasterio.windows import Window

from domains.agriculture.contract import GeoTiffPatchContract
from domains.agriculture.indices import Roles, check_indices, compute_indices, resolve_roles
from domains.agriculture.raster import RasterStack

log = logging.getLogger(__name__)


@dataclass
class BandSpec:
    """How to turn raster bands into network channels (shared by every agriculture datamodule).

    Args:
        bands: bands to use, by name or 1-based index; ``None`` = all, in file order.
        band_names: names of all bands, in file order (default: descriptions, else B1..Bn).
        band_roles: role -> band name (e.g. ``{red: B4, nir: B8}``), the explicit evidence for
            spectral indices.
        nodata: nodata value overriding the files' own.
        indices: spectral indices appended as channels.
        sensor: read band names such as B4/B04 as this sensor's band numbers to find roles
            (``sentinel2``, ``landsat8``, ``landsat9``, ``landsat7``, ``landsat5``).
    """

    bands: list[str | int] | None = None
    band_names: list[str] | None = None
    band_roles: dict[str, str] | None = None
    nodata: float | None = None
    indices: list[str] = field(default_factory=list)
    sensor: str | None = None
    roles: Roles | None = field(default=None, init=False, repr=False)

    @classmethod
    def from_contract(cls, contract: GeoTiffPatchContract) -> BandSpec:
        """The training's band handling from its input contract: the same selection, names,
        resolved roles (never guessed again), nodata and indices."""
        # Select bands the way training did (``band_selection``: the `bands` option, None =
        # all), so a file with other bands is refused as on the Lightning path.
        selection = list(contract.band_selection) if contract.band_selection is not None else None
        return cls(selection, list(contract.band_names) if contract.band_names is not None else None,
                   dict(contract.band_roles) or None, contract.nodata, list(contract.indices))

    def open_as_trained(self, path: str, contract: GeoTiffPatchContract) -> RasterStack:
        """Open one file with this spec and refuse it unless its bands are the contract's."""
        from core.errors import DataError

        stack = self.open(path)
        try:
            check_same_bands(stack, contract.bands, contract.file_band_count, path)
        except DataError:
            stack.close()
            raise
        return stack

    def open(self, paths: str | Sequence[str]) -> RasterStack:
        """Open the image(s), select the bands and check the indices' band roles."""
        stack = RasterStack(paths, self.bands, self.band_names, self.nodata)
        roles = check_indices(self.indices, stack.names, self.band_roles, self.sensor)
        if self.roles is None or roles.names != self.roles.names:
            # Said once per spec (patch folders open a file per sample), and again if it changes.
            if stack.names_by_position and self.sensor is not None and not self.band_roles and roles.names:
                # Band numbers read from positions: right only if the file holds the sensor's
                # bands in order from band 1, so this assumption is shown, not just logged.
                log.warning("band roles: %s; the file's bands are undescribed, so band n is assumed "
                            "to be %s band n; set band_roles if the file holds other bands",
                            roles.describe(), self.sensor)
            else:
                log.info("band roles: %s%s", roles.describe(),
                         "; undescribed bands are named B1..Bn by position and get no role"
                         if stack.names_by_position and not self.band_roles else "")
        self.roles = roles
        return stack

    def channel_names(self, stack: RasterStack) -> list[str]:
        """The network's input channel names: each band's role (blue, green, red, nir, swir1,
        swir2) where explicit evidence gives it one (see :func:`resolve_roles`), else its band
        name; then the indices.

        The model reads these names (pretrained RGB stem filters go to channels named
        red/green/blue), so a band is named by a role only from evidence, never from its
        number or position. Prediction selects bands by the contract's ``bands`` (the file's
        band names), not by these.
        """
        from core.errors import DataError

        roles = resolve_roles(stack.names, self.band_roles, self.sensor)
        role_at = {i: role for role, i in roles.positions.items()}
        names = [role_at.get(i, name) for i, name in enumerate(stack.names)]
        for i, name in enumerate(names):
            same = [j for j, other in enumerate(names) if other.lower() == name.lower()]
            if len(same) > 1 and i in role_at:
                other = stack.names[next(j for j in same if j != i)]
                raise DataError(
                    f"band '{stack.names[i]}' has the {name} role ({roles.source}), but band '{other}' "
                    f"is also named {name}; rename the bands with band_names or fix band_roles/sensor"
                )
        return [*names, *[i.upper() for i in self.indices]]

    def contract(self, stack: RasterStack) -> dict[str, Any]:
        """The band fields of the input contract (:class:`GeoTiffPatchContract`): what
        prediction must reproduce."""
        roles = self.roles if self.roles is not None else check_indices([], stack.names, self.band_roles,
                                                                          self.sensor)
        return {
            "bands": stack.names,
            # The `bands` option as given (None = all): prediction selects the same way, so a
            # file with other bands is refused on both predict paths instead of picking band 1.
            "band_selection": list(self.bands) if self.bands is not None else None,
            "band_names": self.band_names,
            "file_band_count": stack.file_band_count,
            "bands_named_by_position": stack.names_by_position,
            "sensor": self.sensor,
            # Resolved role -> band name: prediction uses these and never re-guesses.
            "band_roles": roles.names,
            "band_roles_source": roles.source,
            "nodata": self.nodata,
            "indices": [i.upper() for i in self.indices],
        }

    def read(self, stack: RasterStack, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """Channels (HWC float32, NaN where invalid) and the valid mask for a window."""
        image, valid = stack.read(window)
        if self.indices:
            image = np.concatenate([image, compute_indices(image, self.indices, self.roles.positions)])
        return np.ascontiguousarray(image.transpose(1, 2, 0)), valid


def check_same_bands(stack: RasterStack, expected: Sequence[str], file_band_count: int | None,
                     path: str, trained_on: str = "the model was trained on") -> None:
    """Refuse a file whose bands differ from training's, naming the file and both band lists.

    ``file_band_count`` (bands in the training file) matters when the bands are named by
    position: B1 of a 1-band file and B1 of a 4-band file share a name, not a meaning.
    """
    from core.errors import DataError

    same_count = (file_band_count is None or not stack.names_by_position
                  or stack.file_band_count == file_band_count)
    if list(stack.names) != list(expected) or not same_count:
        count = f" of {file_band_count}-band files" if file_band_count is not None else ""
        raise DataError(
            f"'{path}' has {stack.file_band_count} band(s) ({', '.join(stack.names)} selected) but "
            f"{trained_on} {', '.join(expected)}{count}; give a file with the same bands in the "
            "same order, or select them with `bands`"
        )
