"""GeoTIFF grid tiling: ours vs torchgeo ``RasterDataset`` + ``GridGeoSampler`` (tiles/s).

    python benchmarks/geotiff_vs_torchgeo.py [--tile 64] [--overlap 16] [--seconds 5] [--rounds 3]
        [--quick] [--markdown FILE]

Both read every tile of the same raster, same tile size and stride, all bands, as a float32
channels-first tensor: ours is the reader of whole-scene prediction (``BandSpec.read`` over
``grid_windows``, the tiles of ``SceneWindows``: per-band windowed reads, nodata marked NaN),
torchgeo's is ``dataset[query]`` for each query of the sampler (``rasterio.merge`` of the
window). The area is cropped to whole strides from the top-left corner (torchgeo's grid starts
at the bottom edge and runs past the top; ours starts at the top and shifts the last tile back),
so both grids are the same set of tiles; the check compares every tile's values (ours NaN =
the file's nodata in torchgeo's). Goal: ours >= 2x torchgeo's tiles/s.

Rasters: ../shared/realdata/satellite/rasterio/RGB.byte.tif (real, 3-band uint8, nodata 0) when
present, and a synthetic 6-band uint16 scene written with rasterio.
torchgeo is not a dependency of the project: ``pip install 'convnext-domains[bench]'``.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import perf  # noqa: E402
import torch  # noqa: E402

GOAL = 2.0


def aligned(size: int, tile: int, stride: int) -> int:
    """The largest extent <= ``size`` that whole strides of tiles cover exactly."""
    return tile + (size - tile) // stride * stride if size >= tile else size


def compare(path: Path, tile: int, overlap: int, seconds: float, rounds: int) -> tuple[list, str]:
    import rasterio
    import shapely
    from torchgeo.datasets import RasterDataset
    from torchgeo.samplers import GridGeoSampler

    from domains.agriculture.bands import BandSpec
    from domains.agriculture.scene import grid_windows

    stride = tile - overlap
    spec = BandSpec(None, None, None, None, [], None)
    stack = spec.open(str(path))
    width, height = aligned(stack.width, tile, stride), aligned(stack.height, tile, stride)
    ours_windows = grid_windows(width, height, tile, overlap)

    class Scene(RasterDataset):
        filename_glob = path.name

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = Scene(paths=str(path.parent))
    with rasterio.open(path) as ds:
        left, top = ds.transform.c, ds.transform.f
        res_x, res_y = ds.transform.a, -ds.transform.e
        file_nodata = ds.nodata
        count, dtype = ds.count, ds.dtypes[0]
    roi = shapely.box(left, top - height * res_y, left + width * res_x, top)
    queries = list(GridGeoSampler(dataset, size=tile, stride=stride, roi=roi))

    def ours(w) -> torch.Tensor:
        image, _ = spec.read(stack, w)
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))

    def theirs(q) -> torch.Tensor:
        return dataset[q]["image"]

    # Same tiles, same values.
    by_corner = {(round((q[0].start - left) / res_x), round((top - q[1].stop) / res_y)): q for q in queries}
    corners = {(int(w.col_off), int(w.row_off)) for w in ours_windows}
    same_tiles = corners == set(by_corner)
    worst, nodata_pixels, filled = 0.0, 0, 0
    for w in ours_windows[:: max(1, len(ours_windows) // 64)]:
        a = ours(w)
        b = theirs(by_corner[(int(w.col_off), int(w.row_off))])
        valid = torch.isfinite(a)
        worst = max(worst, float((a[valid] - b[valid]).abs().max()) if valid.any() else 0.0)
        # Ours marks a pixel nodata when any band is; torchgeo keeps the other bands' values,
        # and its bilinear merge may fill a nodata pixel at the edge of valid data.
        invalid = ~valid.all(dim=0)
        nodata_pixels += int(invalid.sum())
        filled += int((~(b[:, invalid] == (file_nodata or 0)).any(dim=0)).sum())
    check = (f"{path.name}: {len(ours_windows)} tiles vs torchgeo's {len(queries)}, same windows: "
             f"{same_tiles}; max |ours - torchgeo| on valid pixels {worst:g} (sampled tiles)")
    if nodata_pixels:
        check += (f"; of {nodata_pixels} nodata pixels (ours NaN), torchgeo has a band = {file_nodata} "
                  f"in all but {filled} (its bilinear merge fills those from valid neighbours)")
    print(check, flush=True)
    if not same_tiles or worst != 0.0:
        raise SystemExit(f"error: outputs differ, the comparison would not be like for like ({check})")

    ours_cycle, theirs_cycle = itertools.cycle(ours_windows), itertools.cycle(queries)

    def ours_work() -> float:
        ours(next(ours_cycle))
        return 1.0

    def theirs_work() -> float:
        theirs(next(theirs_cycle))
        return 1.0

    rates = perf.interleaved({"ours": ours_work, "torchgeo": theirs_work}, rounds, seconds, warmup=3)
    a, b = perf.median(rates["ours"]), perf.median(rates["torchgeo"])
    stack.close()
    row = [f"{path.name} ({count} bands, {dtype}, "
           f"{width}x{height} of {stack.width}x{stack.height})", f"{tile} / {stride}", len(ours_windows),
           f"{a:.1f}", f"{b:.1f}", f"{a / b:.2f}", f">= {GOAL:g}", perf.meets(a / b, GOAL)]
    return row, check


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    perf.common_args(parser, seconds=5.0, rounds=3)
    parser.add_argument("--tile", type=int, default=64)
    parser.add_argument("--overlap", type=int, default=16)
    args = parser.parse_args(argv)
    perf.apply_common(args)
    table = perf.Table("GeoTIFF grid tiles: ours vs torchgeo RasterDataset + GridGeoSampler",
                       ["raster", "tile / stride", "tiles", "ours tiles/s", "torchgeo tiles/s", "ratio",
                        "goal", "met"])
    if perf.tool_missing(table, "torchgeo", "torchgeo", args.markdown):
        return
    with tempfile.TemporaryDirectory() as tmp:
        rasters = []
        real = perf.REALDATA / "satellite" / "rasterio" / "RGB.byte.tif"
        if real.is_file() and not args.quick:
            rasters.append(real)
        size = 160 if args.quick else aligned(1600, args.tile, args.tile - args.overlap)
        rasters.append(perf.write_scene(Path(tmp) / "synthetic", size, size)["image"])
        for path in rasters:
            row, check = compare(path, args.tile if not args.quick else 32,
                                 args.overlap if not args.quick else 8, args.seconds, args.rounds)
            table.add(*row)
            table.notes.append(f"check: {check}")
    table.notes.append(f"median of {args.rounds} interleaved rounds of ~{args.seconds:g} s per side, "
                       "3 untimed tiles each first; one process, no DataLoader on either side")
    perf.emit([table], args.markdown)


if __name__ == "__main__":
    main()
