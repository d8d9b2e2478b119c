"""Magnetic-tile defect detection (../shared/realdata/manufacturing/magnetic_tile_defects).

    python benchmarks/detection.py [--detector faster_rcnn] [--backbone convnext_atto] [--epochs 20]
        [--size 128] [--batch 16] [--seed 0]

Boxes come from the defect masks (one per blob, class = folder); MT_Free tiles are negatives.
The held-out test split (15 %, stratified by class, seeded) is scored with COCO mAP@.5 and
mAP@[.5:.95] before training (the same network, untrained: the floor) and after ``--epochs``
from scratch. Train images/s are timed over the training epochs only (data loading included,
validation excluded); inference images/s over the test images with the detector's own
post-processing (score filter, NMS), eager torch (batches) and the exported bundle's ONNX graph
in ONNX Runtime (one image per run, as bundles run it), one process. The trained model is
exported like any bundle; its parity check against Lightning (same detections, boxes within
1e-3 px, scores within 1e-4) is reported with the largest differences measured.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, Trainer, seed_everything

from domains.manufacturing import DefectDetectionDataModule, DefectDetectionTask

REAL = Path(__file__).resolve().parents[2] / "shared" / "realdata" / "manufacturing" / "magnetic_tile_defects"


class TrainClock(Callback):
    """Seconds and images of the training batches alone: each batch counts from the end of the
    previous one (its data loading included); validation, run after an epoch's last batch, not."""

    def __init__(self) -> None:
        self.seconds, self.images, self._last = 0.0, 0, 0.0

    def on_train_epoch_start(self, trainer: Trainer, pl_module: Any) -> None:
        self._last = time.perf_counter()

    def on_train_batch_end(self, trainer: Trainer, pl_module: Any, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        now = time.perf_counter()
        self.seconds += now - self._last
        self._last = now
        self.images += len(batch["image"])


def inference_rate(task: DefectDetectionTask, dm: DefectDetectionDataModule) -> float:
    """Test images per second of the eval forward (post-processing included), data excluded."""
    task.eval()
    batches = [batch["image"] for batch in dm.test_dataloader()]
    with torch.inference_mode():
        task(batches[0])  # warm-up, not timed
        start = time.perf_counter()
        for images in batches:
            task(images)
        seconds = time.perf_counter() - start
    return sum(len(b) for b in batches) / seconds


def onnx_rate(bundle_dir: Path, dm: DefectDetectionDataModule) -> float:
    """Test images per second of the bundle's one-image graph in ONNX Runtime (data excluded)."""
    from core.bundle import load_bundle
    from core.predict_detection import detect

    bundle = load_bundle(bundle_dir)
    images = [image.numpy() for batch in dm.test_dataloader() for image in batch["image"]]
    detect(bundle, images[0])  # warm-up, not timed
    start = time.perf_counter()
    for image in images:
        detect(bundle, image)
    return len(images) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detector", default="faster_rcnn", choices=["fcos", "retinanet", "faster_rcnn"])
    parser.add_argument("--backbone", default="convnext_atto")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root", type=Path, default=REAL)
    args = parser.parse_args(argv)
    if not args.root.is_dir():
        raise SystemExit(f"error: real data not found at {args.root}; pass --root DIR (see "
                         "../shared/realdata/README.md)")

    seed_everything(args.seed)
    dm = DefectDetectionDataModule(root=str(args.root), good_class="MT_Free", on_bad_annotation="skip",
                                   image_size=args.size, batch_size=args.batch, augment="flips",
                                   seed=args.seed, num_workers=0)
    dm.setup("fit")
    task = DefectDetectionTask(detector=args.detector, backbone=args.backbone, in_chans=dm.in_chans,
                               num_classes=dm.num_classes, class_names=dm.class_names, fpn_channels=64,
                               lr=args.lr, warmup_epochs=1, drop_path_rate=0.0)
    clock = TrainClock()
    with tempfile.TemporaryDirectory() as tmp:
        def trainer(epochs: int, callbacks: list[Callback]) -> Trainer:
            return Trainer(accelerator="cpu", max_epochs=epochs, precision=32, logger=True,
                           enable_progress_bar=False, enable_model_summary=False,
                           enable_checkpointing=False, num_sanity_val_steps=0,
                           default_root_dir=tmp, callbacks=callbacks)

        untrained = trainer(0, []).test(task, datamodule=dm, verbose=False)[0]
        fit = trainer(args.epochs, [clock])
        start = time.perf_counter()
        fit.fit(task, datamodule=dm)
        fit_s = time.perf_counter() - start
        trained = fit.test(task, datamodule=dm, verbose=False)[0]
        infer = inference_rate(task, dm)
        from core.export import export_bundle

        ckpt = Path(tmp) / "trained.ckpt"
        fit.save_checkpoint(ckpt)
        bundle = export_bundle(ckpt, Path(tmp) / "bundle")
        parity = json.loads((bundle / "metadata.json").read_text())["parity"]
        onnx = onnx_rate(bundle, dm)

    sizes = {k: len(v) for k, v in dm.splits.items()}
    versions = ", ".join(f"{p} {importlib.metadata.version(p)}" for p in ("torch", "torchvision", "timm"))
    print(f"{datetime.date.today()}  {platform.processor() or platform.machine()}, {os.cpu_count()} "
          f"cores, {torch.get_num_threads()} torch threads; {versions}")
    print(f"magnetic tiles {sizes}, {args.size} px, {args.detector} on {args.backbone} from scratch, "
          f"{args.epochs} epochs, batch {args.batch}, seed {args.seed}; fit {fit_s / 60:.1f} min")
    print()
    print("| model | test mAP@.5 | test mAP@[.5:.95] | defect recall @op | false-reject rate @op |")
    print("|---|---|---|---|---|")
    for name, r in (("untrained (same network)", untrained), (f"trained {args.epochs} epochs", trained)):
        print(f"| {name} | {r['test/map_50']:.3f} | {r['test/map']:.3f} | "
              f"{r.get('test/op_defect_recall', float('nan')):.3f} | "
              f"{r.get('test/op_false_reject_rate', float('nan')):.3f} |")
    print()
    print("| throughput (CPU, eager) | images/s |")
    print("|---|---|")
    print(f"| train (forward + backward + step, data loading included) | {clock.images / clock.seconds:.1f} |")
    print(f"| inference, torch eager, batch {args.batch} (post-processing included) | {infer:.1f} |")
    print(f"| inference, exported bundle in ONNX Runtime, 1 image per run | {onnx:.1f} |")
    print()
    print(f"Export parity (trained model, {parity['samples']} seeded inputs, detections per input "
          f"{parity['detections']}): max box difference {parity['max_box_diff_px']:.2e} px "
          f"(tolerance {parity['box_tolerance_px']:g}), max score difference "
          f"{parity['max_score_diff']:.2e} (tolerance {parity['score_tolerance']:g})")


if __name__ == "__main__":
    main()
