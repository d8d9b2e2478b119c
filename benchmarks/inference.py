"""CPU inference throughput: ONNX Runtime vs torch eager on the same exported ConvNeXt, and INT8.

A fresh classifier (random weights: throughput does not depend on them) is exported with
``core.export.write_onnx`` exactly as a bundle's ``model.onnx`` (fp32, dynamic batch), then
dynamically quantised with ``core.quantize.quantize_int8`` (int8 weights of the ``MatMul``
layers, the default, and of ``MatMul`` + ``Conv`` for comparison). All engines get the same batch
and the same thread count; rounds are interleaved (eager, ORT, ORT int8, ... , eager, ...) so
machine noise hits all alike, and warm-up iterations are not timed. Goal: ORT >= 1.5x eager.

INT8 parity: softmax probabilities of the quantised model vs fp32 ORT on ``--parity`` seeded
random images (largest absolute difference, argmax agreement). With random weights the logits
are close together, so argmax agreement is a harsher test than on a trained model.

    python benchmarks/inference.py [--backbone convnext_atto] [--batches 1 16] [--size 128]
        [--in-chans 3] [--rounds 3] [--seconds 3] [--threads N] [--quick] [--markdown FILE]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import perf  # noqa: E402
import torch  # noqa: E402

from core.classification import ClassificationTask  # noqa: E402
from core.export import write_onnx  # noqa: E402
from core.quantize import DEFAULT_OP_TYPES, quantize_int8  # noqa: E402

GOAL = 1.5
INT8_VARIANTS = {"int8 MatMul": DEFAULT_OP_TYPES, "int8 MatMul+Conv": ("MatMul", "Conv")}


def session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def measure(backbone: str, shape: tuple[int, int, int], args: argparse.Namespace, speed: perf.Table,
            parity: perf.Table) -> None:
    """Rows of ``speed`` (one per batch size) and ``parity`` for one backbone."""
    torch.manual_seed(0)
    model = ClassificationTask(backbone=backbone, num_classes=args.num_classes, in_chans=shape[0]).eval()
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "model.onnx"
        write_onnx(model, fp32, shape)
        paths = {"fp32": fp32}
        for name, ops in INT8_VARIANTS.items():
            paths[name] = quantize_int8(fp32, Path(tmp) / f"{name.replace(' ', '_')}.onnx", op_types=ops)
        sessions, unsupported = {}, {}
        for name, path in paths.items():
            try:
                sessions[name] = session(path, args.threads)
            except Exception as err:  # e.g. no ConvInteger kernel in older onnxruntime releases
                if name == "fp32":
                    raise
                unsupported[name] = str(err).split(":")[-1].strip()[:80]
        sizes = {name: f"{p.stat().st_size / 2**20:.1f} MiB" for name, p in paths.items()}

    x = torch.randn(args.parity, *shape, generator=torch.Generator().manual_seed(1)).numpy()
    reference = softmax(sessions["fp32"].run(None, {"input": x})[0])
    with torch.inference_mode():
        eager_diff = float(np.abs(softmax(model(torch.from_numpy(x)).numpy()) - reference).max())
    parity.add(backbone, "torch eager fp32", sizes["fp32"], f"{eager_diff:.2e}", "-")
    for name in INT8_VARIANTS:
        if name in unsupported:
            parity.add(backbone, name, sizes[name], f"not run: onnxruntime {ort.__version__}: "
                       f"{unsupported[name]}", "-")
            continue
        probs = softmax(sessions[name].run(None, {"input": x})[0])
        parity.add(backbone, name, sizes[name], f"{float(np.abs(probs - reference).max()):.2e}",
                   f"{float((probs.argmax(1) == reference.argmax(1)).mean()):.3f}")

    for batch in args.batches:
        xb = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(2))
        xb_np = xb.numpy()

        def eager(xb=xb, batch=batch) -> float:
            with torch.inference_mode():
                model(xb)
            return float(batch)

        def onnx(name: str, xb_np=xb_np, batch=batch) -> Callable[[], float]:
            def work() -> float:
                sessions[name].run(None, {"input": xb_np})
                return float(batch)
            return work

        print(f"{backbone} batch {batch} ...", flush=True)
        sides = {"eager": eager, **{name: onnx(name) for name in sessions}}
        rates = perf.interleaved(sides, args.rounds, args.seconds, warmup=3)
        med = {name: perf.median(v) for name, v in rates.items()}
        ratio = med["fp32"] / med["eager"]
        speed.add(backbone, batch, f"{med['eager']:.1f}", f"{med['fp32']:.1f}", f"{ratio:.2f}", f">= {GOAL:g}",
                  perf.meets(ratio, GOAL), *[f"{med[v]:.1f}" if v in med else "n/a" for v in INT8_VARIANTS],
                  *[f"{med[v] / med['fp32']:.2f}" if v in med else "n/a" for v in INT8_VARIANTS])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    perf.common_args(parser, seconds=3.0, rounds=3)
    parser.add_argument("--backbones", nargs="+", default=["convnext_atto"],
                        help="timm ConvNeXt names; the atto..nano family has convolution MLPs "
                             "(conv_mlp), tiny and larger have MatMul MLPs")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--in-chans", type=int, default=3)
    parser.add_argument("--num-classes", type=int, default=2)
    parser.add_argument("--parity", type=int, default=64, help="seeded images of the INT8 parity check")
    args = parser.parse_args(argv)
    perf.apply_common(args)
    if args.quick:
        args.size, args.parity = 32, 8

    shape = (args.in_chans, args.size, args.size)
    speed = perf.Table(
        f"Inference: ONNX Runtime vs torch eager, and INT8 dynamic quantisation "
        f"({args.in_chans} x {args.size} x {args.size}, fp32 unless int8)",
        ["model", "batch", "eager img/s", "ORT fp32 img/s", "ORT / eager", "goal", "met",
         *[f"{v} img/s" for v in INT8_VARIANTS], *[f"{v} / ORT fp32" for v in INT8_VARIANTS]])
    parity = perf.Table(f"INT8 parity vs fp32 ONNX Runtime (random weights, {args.parity} seeded images)",
                        ["model", "variant", "file size", "max abs probability difference",
                         "argmax agreement"])
    for backbone in args.backbones:
        measure(backbone, shape, args, speed, parity)
    speed.notes.append(f"median of {args.rounds} interleaved rounds of ~{args.seconds:g} s per engine, 3 "
                       f"untimed runs each first; torch threads = ORT intra_op_num_threads = {args.threads}; "
                       f"onnxruntime {perf.version('onnxruntime')}; INT8 = core.quantize.quantize_int8 "
                       "(dynamic, int8 weights; `MatMul` is its default)")
    perf.emit([speed, parity], args.markdown)


if __name__ == "__main__":
    main()
