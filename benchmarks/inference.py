"""CPU inference throughput: ONNX Runtime vs torch eager on the same exported ConvNeXt.

A fresh classifier (random weights: throughput does not depend on them) is exported with
``core.export.write_onnx`` exactly as a bundle's ``model.onnx`` (fp32, dynamic batch). Both
engines get the same batch and the same thread count; rounds are interleaved (eager, ORT,
eager, ORT, ...) so machine noise hits both alike, and warm-up iterations are not timed.
Each round times ``--iters`` forward passes; the table gives images/s over the rounds.

    python benchmarks/inference.py [--backbone convnext_atto] [--batch 16] [--size 128]
        [--in-chans 3] [--rounds 5] [--iters 10] [--threads N]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from core.classification import ClassificationTask
from core.export import write_onnx


def images_per_second(run: Callable[[], object], batch: int, iters: int) -> float:
    start = time.perf_counter()
    for _ in range(iters):
        run()
    return batch * iters / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="convnext_atto")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--in-chans", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3, help="untimed iterations per engine")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="intra-op threads of both engines (default: torch's)")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    model = ClassificationTask(backbone=args.backbone, num_classes=2, in_chans=args.in_chans).eval()
    shape = (args.in_chans, args.size, args.size)
    x = torch.randn(args.batch, *shape, generator=torch.Generator().manual_seed(1))
    x_np = x.numpy()

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        write_onnx(model, path, shape)
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def eager() -> torch.Tensor:
        with torch.inference_mode():
            return model(x)

    def onnx() -> np.ndarray:
        return session.run(None, {"input": x_np})[0]

    diff = float(np.abs(eager().numpy() - onnx()).max())
    for _ in range(args.warmup):
        eager()
        onnx()
    speeds: dict[str, list[float]] = {"torch eager": [], "onnxruntime": []}
    for _ in range(args.rounds):
        speeds["torch eager"].append(images_per_second(eager, args.batch, args.iters))
        speeds["onnxruntime"].append(images_per_second(onnx, args.batch, args.iters))

    eager_median = statistics.median(speeds["torch eager"])
    print(f"{args.backbone}, batch {args.batch} x {args.in_chans} x {args.size} x {args.size} fp32, "
          f"{args.rounds} interleaved rounds x {args.iters} iterations (warm-up {args.warmup} excluded)")
    print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} logical cores; "
          f"threads: torch.get_num_threads()={torch.get_num_threads()}, "
          f"ORT intra_op_num_threads={options.intra_op_num_threads}")
    print(f"torch {torch.__version__}, onnxruntime {importlib.metadata.version('onnxruntime')}; "
          f"max |logits_ort - logits_torch| = {diff:.2e}")
    print()
    print(f"{'engine':<12} {'median img/s':>13} {'min img/s':>10} {'ORT/eager':>10}")
    for name, values in speeds.items():
        median = statistics.median(values)
        print(f"{name:<12} {median:>13.1f} {min(values):>10.1f} {median / eager_median:>10.2f}")


if __name__ == "__main__":
    main()
