"""Spectral indices appended as extra channels, found by band role (red, nir, ...)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from core.errors import DataError

# Normalised differences (a - b) / (a + b) by band role.
NORMALISED_DIFFERENCES: dict[str, tuple[str, str]] = {
    "NDVI": ("nir", "red"),      # vegetation
    "NDWI": ("green", "nir"),    # open water (McFeeters)
    "NDMI": ("nir", "swir1"),    # vegetation moisture
    "NDBI": ("swir1", "nir"),    # built-up
    "NBR": ("nir", "swir2"),     # burn ratio
}

# Band names that mean a role by themselves (band descriptions or `band_names`). Band numbers
# such as B4 are not here: B4 is red on Sentinel-2 and Landsat 8/9 but NIR on Landsat 5/7, and
# B1..Bn is also the default name of an undescribed file's bands by position.
DEFAULT_ROLE_NAMES: dict[str, set[str]] = {
    "blue": {"blue", "b"},
    "green": {"green", "g"},
    "red": {"red", "r"},
    "nir": {"nir"},
    "swir1": {"swir1", "swir16"},
    "swir2": {"swir2", "swir22"},
}

# Band numbers -> role for the sensors a user can name with `sensor`.
SENSOR_BANDS: dict[str, dict[str, str]] = {
    "sentinel2": {"2": "blue", "3": "green", "4": "red", "8": "nir", "11": "swir1", "12": "swir2"},
    "landsat8": {"2": "blue", "3": "green", "4": "red", "5": "nir", "6": "swir1", "7": "swir2"},
    "landsat9": {"2": "blue", "3": "green", "4": "red", "5": "nir", "6": "swir1", "7": "swir2"},
    "landsat7": {"1": "blue", "2": "green", "3": "red", "4": "nir", "5": "swir1", "7": "swir2"},
    "landsat5": {"1": "blue", "2": "green", "3": "red", "4": "nir", "5": "swir1", "7": "swir2"},
}
SENSORS = sorted(SENSOR_BANDS)

# "B4", "B04", "b8", "SR_B4" (Landsat collection 2) -> "4", "8"; "B8A" -> "8a" (no role).
_BAND_NUMBER = re.compile(r"^(?:sr_)?b0*(\d+a?)$", re.IGNORECASE)


@dataclass(frozen=True)
class Roles:
    """Band roles found for a list of band names, and the evidence they came from."""

    positions: dict[str, int]
    names: dict[str, str]
    source: str

    def describe(self) -> str:
        """``red=B4, nir=B8 (from sensor sentinel2 band numbers)`` for the log."""
        if not self.names:
            return f"none ({self.source})"
        return ", ".join(f"{r}={n}" for r, n in self.names.items()) + f" ({self.source})"


def _savi(bands: Mapping[str, np.ndarray]) -> np.ndarray:
    nir, red = bands["nir"], bands["red"]
    return 1.5 * (nir - red) / (nir + red + 0.5)


OTHER_INDICES: dict[str, tuple[tuple[str, ...], Callable[[Mapping[str, np.ndarray]], np.ndarray]]] = {
    "SAVI": (("nir", "red"), _savi),  # assumes reflectance in [0, 1]
}

AVAILABLE = sorted([*NORMALISED_DIFFERENCES, *OTHER_INDICES])


def resolve_roles(band_names: Sequence[str], band_roles: Mapping[str, str] | None = None,
                  sensor: str | None = None) -> Roles:
    """Band roles (red, nir, ...) of ``band_names`` from explicit evidence only.

    In order: ``band_roles`` (role -> band name); else ``sensor``, reading band names such as
    B4/B04/SR_B4 as that sensor's band numbers; else bands whose names are roles themselves
    (red, nir, ...). Positions are never guessed: an undescribed file's B1..Bn have no roles
    unless a sensor or ``band_roles`` is given.
    """
    names = list(band_names)
    if band_roles:
        positions = {}
        for role, name in band_roles.items():
            if name not in names:
                raise DataError(f"band_roles maps {role} to '{name}', which is not a selected band "
                                f"({', '.join(names)}); fix band_roles or bands")
            positions[role.lower()] = names.index(name)
        source = "from band_roles"
    elif sensor is not None:
        key = sensor.lower().replace("-", "").replace("_", "")
        if key not in SENSOR_BANDS:
            raise DataError(f"unknown sensor '{sensor}'; known: {', '.join(SENSORS)} (or map the "
                            "bands yourself with band_roles, e.g. {red: B4, nir: B8})")
        table = SENSOR_BANDS[key]
        positions = {}
        for i, name in enumerate(names):
            match = _BAND_NUMBER.match(name.strip())
            role = table.get(match.group(1).lower()) if match else None
            if role is not None and role not in positions:
                positions[role] = i
        source = f"from sensor {key} band numbers"
    else:
        lowered = [n.strip().lower() for n in names]
        positions = {role: lowered.index(n) for role, aliases in DEFAULT_ROLE_NAMES.items()
                     for n in aliases if n in lowered}
        source = "from band names"
    return Roles(positions, {r: names[i] for r, i in positions.items()}, source)


def index_requirements(name: str) -> tuple[str, ...]:
    key = name.upper()
    if key in NORMALISED_DIFFERENCES:
        return NORMALISED_DIFFERENCES[key]
    if key in OTHER_INDICES:
        return OTHER_INDICES[key][0]
    raise DataError(f"unknown spectral index '{name}'; available: {', '.join(AVAILABLE)}")


def check_indices(names: Sequence[str], band_names: Sequence[str],
                  band_roles: Mapping[str, str] | None, sensor: str | None = None) -> Roles:
    """Validate that every index can be computed from known band roles; return the roles."""
    roles = resolve_roles(band_names, band_roles, sensor)
    for name in names:
        missing = [r for r in index_requirements(name) if r not in roles.positions]
        if missing:
            raise DataError(
                f"index {name} needs the {', '.join(missing)} band(s), but no band role is known for "
                f"{', '.join(missing)} among bands {', '.join(band_names)} (roles {roles.describe()}); "
                "band roles are never guessed from band positions: map them with band_roles, e.g. "
                f"band_roles: {{{', '.join(f'{r}: <band name>' for r in missing)}}}, name the bands "
                f"by role (band_names: [blue, green, red, nir, ...]) or set sensor "
                f"({', '.join(SENSORS)})"
            )
    return roles


def compute_indices(image: np.ndarray, names: Sequence[str], roles: Mapping[str, int]) -> np.ndarray:
    """Indices for a CHW image as KHW float32; NaN where undefined (nodata or 0/0)."""
    out = np.empty((len(names), *image.shape[1:]), dtype=np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        for k, name in enumerate(names):
            key = name.upper()
            if key in NORMALISED_DIFFERENCES:
                a, b = (image[roles[r]] for r in NORMALISED_DIFFERENCES[key])
                out[k] = (a - b) / (a + b)
            else:
                needed, fn = OTHER_INDICES[key]
                out[k] = fn({r: image[roles[r]] for r in needed})
    out[~np.isfinite(out)] = np.nan
    return out
