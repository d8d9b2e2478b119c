"""Write a synthetic scene with objects so the agriculture detection config runs without data.

    python -m domains.agriculture.synthetic_detection data/agriculture_detection_demo [--size 256]

Objects are small squares whose spectra differ from the background field (``tree``: high NIR;
``pond``: low NIR, dark red), on a 4-band uint16 UTM scene (EPSG:32633, 10 m pixels) with a
nodata strip. The objects are written the way GIS tools export them: ``objects.geojson`` as
WGS84 lon/lat polygons (RFC 7946) with a ``class`` property, and ``objects_mask.tif`` as a class
mask on the scene's grid (1 = tree, 2 = pond).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin
from rasterio.warp import transform as warp

from domains.agriculture.synthetic import BANDS, CRS, write_scene

CLASSES = {1: "tree", 2: "pond"}
SPECTRA = {0: (700, 1000, 900, 2500), 1: (400, 800, 300, 5500), 2: (900, 1000, 500, 200)}
ORIGIN = (500_000.0, 5_000_000.0)  # UTM 33N easting/northing of the top-left corner
PIXEL = 10.0


def place_objects(width: int, height: int, count: int, rng: np.random.Generator,
                  sizes: tuple[int, int] = (5, 10), margin: int = 2) -> list[tuple[int, int, int, int, int]]:
    """Non-touching squares as (class code, x0, y0, x1, y1) pixel boxes."""
    taken = np.zeros((height, width), bool)
    out: list[tuple[int, int, int, int, int]] = []
    for _ in range(count * 50):
        if len(out) == count:
            break
        s = int(rng.integers(sizes[0], sizes[1] + 1))
        x0, y0 = int(rng.integers(0, width - s)), int(rng.integers(0, height - s))
        if taken[max(0, y0 - margin):y0 + s + margin, max(0, x0 - margin):x0 + s + margin].any():
            continue
        taken[y0:y0 + s, x0:x0 + s] = True
        out.append((int(rng.integers(1, len(CLASSES) + 1)), x0, y0, x0 + s, y0 + s))
    return out


def write_detection_scene(out_dir: str | Path, width: int = 256, height: int = 256, objects: int = 40,
                          seed: int = 0, nodata_rows: int = 4) -> dict[str, Path]:
    """Write ``scene.tif``, ``objects.geojson`` (lon/lat) and ``objects_mask.tif``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    transform = from_origin(*ORIGIN, PIXEL, PIXEL)
    classes = np.zeros((height, width), np.uint8)
    placed = place_objects(width, height - nodata_rows, objects, rng)
    for code, x0, y0, x1, y1 in placed:
        classes[y0:y1, x0:x1] = code
    image = np.zeros((len(BANDS), height, width), np.float64)
    for code, spectrum in SPECTRA.items():
        image[:, classes == code] = np.asarray(spectrum, np.float64)[:, None]
    image = np.clip(image + rng.normal(0, 120, image.shape), 1, 10000).astype(np.uint16)
    image[:, height - nodata_rows:] = 0  # nodata strip at the bottom
    paths = {"scene": out / "scene.tif", "geojson": out / "objects.geojson", "mask": out / "objects_mask.tif"}
    write_scene(paths["scene"], image, transform)
    with rasterio.open(paths["mask"], "w", driver="GTiff", width=width, height=height, count=1,
                       dtype="uint8", crs=CRS, transform=transform) as dst:
        dst.write(classes, 1)
    features = []
    for k, (code, x0, y0, x1, y1) in enumerate(placed):
        corners = [(x0, y1), (x1, y1), (x1, y0), (x0, y0), (x0, y1)]
        xs, ys = zip(*(transform @ c for c in corners), strict=True)
        lon, lat = warp(CRS, "EPSG:4326", list(xs), list(ys))
        features.append({"type": "Feature", "id": k, "properties": {"class": CLASSES[code]},
                         "geometry": {"type": "Polygon",
                                      "coordinates": [[[x, y] for x, y in zip(lon, lat, strict=True)]]}})
    paths["geojson"].write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--objects", type=int, default=40)
    args = parser.parse_args()
    paths = write_detection_scene(args.out_dir, args.size, args.size, args.objects)
    print("\n".join(f"{k}: {v}" for k, v in paths.items()))


if __name__ == "__main__":
    main()
