"""Write a synthetic multispectral demo scene so the agriculture configs run without data.

    python -m domains.agriculture.synthetic data/agriculture_demo [--size 512] [--sparse 0.02]

Fields are rectangles of three land covers whose spectra differ (water: low NIR; crop: high
NIR, low red; bare soil: flat, bright), so the class of each pixel follows from its band
values. The scene has a nodata border, a label raster on the same grid (0 = unlabelled), and a
folder of labelled patches for tile classification.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

BANDS = ["blue", "green", "red", "nir"]
CLASSES = {1: "water", 2: "crop", 3: "bare_soil"}
# Mean reflectance x 10000 per class and band (blue, green, red, nir).
SPECTRA = {1: (900, 1100, 700, 300), 2: (500, 900, 400, 4500), 3: (1500, 1800, 2200, 2600)}
NODATA = 0
CRS = "EPSG:32633"


def class_layout(width: int, height: int, rng: np.random.Generator, field: int = 32) -> np.ndarray:
    """Rectangular fields of random classes (1..3)."""
    rows, cols = -(-height // field), -(-width // field)
    grid = rng.integers(1, len(CLASSES) + 1, (rows, cols))
    return np.kron(grid, np.ones((field, field), dtype=np.int64))[:height, :width].astype(np.uint8)


def render(classes: np.ndarray, rng: np.random.Generator, noise: float = 150.0) -> np.ndarray:
    """Bands (4, H, W) uint16 for a class map."""
    image = np.zeros((len(BANDS), *classes.shape), dtype=np.float64)
    for code, spectrum in SPECTRA.items():
        image[:, classes == code] = np.asarray(spectrum, dtype=np.float64)[:, None]
    image += rng.normal(0, noise, image.shape)
    return np.clip(image, 1, 10000).astype(np.uint16)


def write_scene(path: Path, image: np.ndarray, transform, crs: str = CRS, nodata: int | None = NODATA) -> None:
    profile = {"driver": "GTiff", "width": image.shape[2], "height": image.shape[1],
               "count": image.shape[0], "dtype": image.dtype.name, "crs": crs,
               "transform": transform, "nodata": nodata}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(image)
        if image.shape[0] == len(BANDS):
            dst.descriptions = tuple(BANDS)


def write_demo_scene(out_dir: str | Path, width: int = 512, height: int = 512, seed: int = 0,
                     sparse: float | None = None, border: int = 8, patches_per_class: int = 20,
                     patch: int = 32) -> dict[str, Path]:
    """Write ``scene.tif`` (4 bands, nodata border), ``labels.tif`` and ``patches/<class>/*.tif``.

    Args:
        out_dir: output folder.
        width, height: scene size in pixels.
        seed: random seed.
        sparse: if set, only this fraction of pixels is labelled (others 0 = unlabelled).
        border: width of the nodata frame around the scene.
        patches_per_class: patches written per class for tile classification.
        patch: patch size in pixels.
    Returns:
        paths of ``scene``, ``labels`` and ``patches``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    classes = class_layout(width, height, rng)
    image = render(classes, rng)
    if border:
        for arr in (image.transpose(1, 2, 0), classes):
            arr[:border], arr[-border:], arr[:, :border], arr[:, -border:] = 0, 0, 0, 0
    labels = classes.copy()
    if sparse is not None:
        labels[rng.random(labels.shape) > sparse] = 0
    transform = from_origin(500000.0, 4500000.0, 10.0, 10.0)
    write_scene(out / "scene.tif", image, transform)
    write_scene(out / "labels.tif", labels[None], transform, nodata=None)
    for code, name in CLASSES.items():
        folder = out / "patches" / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(patches_per_class):
            img = render(np.full((patch, patch), code, dtype=np.uint8), rng)
            write_scene(folder / f"{name}_{i:03d}.tif", img,
                        from_origin(500000.0 + i * patch * 10, 4400000.0, 10.0, 10.0))
    return {"scene": out / "scene.tif", "labels": out / "labels.tif", "patches": out / "patches"}


def main() -> None:
    parser = argparse.ArgumentParser(description="Write a synthetic multispectral demo scene.")
    parser.add_argument("out_dir")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--sparse", type=float, default=None, help="fraction of labelled pixels")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    paths = write_demo_scene(args.out_dir, args.size, args.size, args.seed, args.sparse)
    for name, path in paths.items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
