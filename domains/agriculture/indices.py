"""Spectral indices appended as extra channels, found by band role (red, nir, ...)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

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

# Band names that mean a role, when the user gives no explicit `band_roles`:
# role names themselves, and Sentinel-2 band numbers.
DEFAULT_ROLE_NAMES: dict[str, set[str]] = {
    "blue": {"blue", "b", "b2", "b02"},
    "green": {"green", "g", "b3", "b03"},
    "red": {"red", "r", "b4", "b04"},
    "nir": {"nir", "b8", "b08"},
    "swir1": {"swir1", "swir16", "b11"},
    "swir2": {"swir2", "swir22", "b12"},
}


def _savi(bands: Mapping[str, np.ndarray]) -> np.ndarray:
    nir, red = bands["nir"], bands["red"]
    return 1.5 * (nir - red) / (nir + red + 0.5)


OTHER_INDICES: dict[str, tuple[tuple[str, ...], Callable[[Mapping[str, np.ndarray]], np.ndarray]]] = {
    "SAVI": (("nir", "red"), _savi),  # assumes reflectance in [0, 1]
}

AVAILABLE = sorted([*NORMALISED_DIFFERENCES, *OTHER_INDICES])


def resolve_roles(band_names: Sequence[str], band_roles: Mapping[str, str] | None) -> dict[str, int]:
    """Role -> channel position, from explicit ``band_roles`` or the default names."""
    lowered = [n.lower() for n in band_names]
    if band_roles:
        roles = {}
        for role, name in band_roles.items():
            if name not in band_names:
                raise DataError(f"band_roles maps {role} to '{name}', which is not a selected band "
                                f"({', '.join(band_names)})")
            roles[role.lower()] = list(band_names).index(name)
        return roles
    return {role: lowered.index(n) for role, names in DEFAULT_ROLE_NAMES.items()
            for n in names if n in lowered}


def index_requirements(name: str) -> tuple[str, ...]:
    key = name.upper()
    if key in NORMALISED_DIFFERENCES:
        return NORMALISED_DIFFERENCES[key]
    if key in OTHER_INDICES:
        return OTHER_INDICES[key][0]
    raise DataError(f"unknown spectral index '{name}'; available: {', '.join(AVAILABLE)}")


def check_indices(names: Sequence[str], band_names: Sequence[str],
                  band_roles: Mapping[str, str] | None) -> dict[str, int]:
    """Validate that every index can be computed; return the role positions."""
    roles = resolve_roles(band_names, band_roles)
    for name in names:
        missing = [r for r in index_requirements(name) if r not in roles]
        if missing:
            raise DataError(
                f"index {name} needs the {', '.join(missing)} band(s), not found among "
                f"{', '.join(band_names)}; name the bands by role (band_names: [blue, green, red, nir, "
                f"...]) or map them, e.g. band_roles: {{{missing[0]}: B5}}"
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
