"""Training FLOP utilisation: achieved fp32 GFLOP/s of the ConvNeXt training step vs a large matmul.

    python benchmarks/flops.py [--backbone convnext_atto] [--batch 32] [--size 128] [--matmul 2048]
        [--seconds 8] [--rounds 3] [--quick] [--markdown FILE]

The FLOPs of one training step (forward + backward of a ``ClassificationTask``) are 3x the
forward FLOPs counted with ``torch.utils.flop_counter.FlopCounterMode`` (convolutions and
matmuls, 2 FLOPs per multiply-add; backward = gradient of the input + gradient of the weights,
each the forward's cost; the optimizer step and element-wise work count zero). FlopCounterMode's
own backward count is not used: it counts the input gradient of a grouped (depthwise)
convolution as if it were dense, ~C times too many (printed in the notes for reference). Achieved GFLOP/s = those
FLOPs / the measured time of a full step (forward, backward, AdamW step), in the default
(contiguous) layout and in ``channels_last``. The reference is an ``N x N`` fp32 matmul
(``2 N^3`` FLOPs) on the same threads, measured in the same run; the rounds alternate between the
three. Utilisation = achieved / matmul GFLOP/s. Goal: >= 40 %.
"""

from __future__ import annotations

import argparse
import copy
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import perf  # noqa: E402
import torch  # noqa: E402
from torch.optim import AdamW  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from core.classification import ClassificationTask  # noqa: E402

GOAL = 0.40
warnings.filterwarnings("ignore", message=".*self.log.*")


def step_flops(task: ClassificationTask, batch: dict[str, torch.Tensor]) -> tuple[int, int]:
    """(FLOPs of forward + backward of one training step as 3x the counted forward, the count
    FlopCounterMode gives for forward + backward itself)."""
    with FlopCounterMode(display=False) as forward:
        task.training_step(batch, 0)
    with FlopCounterMode(display=False) as both:
        task.training_step(batch, 0).backward()
    task.zero_grad(set_to_none=True)
    return 3 * forward.get_total_flops(), both.get_total_flops()


def train_step(task: ClassificationTask, batch: dict[str, torch.Tensor], flops: int) -> Callable[[], float]:
    opt = AdamW(task.parameters(), lr=1e-3)
    task.train()

    def work() -> float:
        opt.zero_grad(set_to_none=True)
        task.training_step(batch, 0).backward()
        opt.step()
        return flops / 1e9

    return work


def matmul(n: int) -> Callable[[], float]:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)

    def work() -> float:
        torch.mm(a, b)
        return 2 * n**3 / 1e9

    return work


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    perf.common_args(parser, seconds=8.0, rounds=3)
    parser.add_argument("--backbone", default="convnext_atto")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--matmul", type=int, default=2048, help="N of the N x N reference matmul")
    args = parser.parse_args(argv)
    perf.apply_common(args)
    if args.quick:
        args.batch, args.size, args.matmul = 4, 32, 256

    torch.manual_seed(0)
    template = ClassificationTask(backbone=args.backbone, num_classes=2, drop_path_rate=0.0)
    g = torch.Generator().manual_seed(1)
    batch = {"image": torch.randn(args.batch, 3, args.size, args.size, generator=g),
             "label": torch.randint(0, 2, (args.batch,), generator=g)}
    flops, counted = step_flops(copy.deepcopy(template), batch)
    last = copy.deepcopy(template).to(memory_format=torch.channels_last)
    last_batch = {**batch, "image": batch["image"].contiguous(memory_format=torch.channels_last)}
    sides = {"training step (contiguous)": train_step(copy.deepcopy(template), batch, flops),
             "training step (channels_last)": train_step(last, last_batch, flops),
             f"matmul {args.matmul}x{args.matmul}": matmul(args.matmul)}
    rates = perf.interleaved(sides, args.rounds, args.seconds, warmup=2)
    reference = perf.median(rates[f"matmul {args.matmul}x{args.matmul}"])
    table = perf.Table(f"Training FLOP utilisation ({args.backbone}, batch {args.batch}, {args.size} px, fp32)",
                       ["measured", "GFLOP/s", "ms/step", "utilisation (vs matmul)", "goal", "met"])
    for name, values in rates.items():
        gflops = perf.median(values)
        if name.startswith("matmul"):
            table.add(name, f"{gflops:.1f}", "-", "100 %", "-", "-")
        else:
            util = gflops / reference
            table.add(name, f"{gflops:.1f}", f"{flops / 1e9 / gflops * 1000:.0f}", f"{100 * util:.0f} %",
                      f">= {100 * GOAL:.0f} %", perf.meets(util, GOAL))
    table.notes.append(f"{flops / 1e9:.2f} GFLOP per step (3 x the forward counted by FlopCounterMode; "
                       f"its own forward + backward count, depthwise input gradients counted dense: "
                       f"{counted / 1e9:.2f}); median of "
                       f"{args.rounds} interleaved rounds of ~{args.seconds:g} s each after 2 untimed calls; "
                       f"{args.threads} threads")
    perf.emit([table], args.markdown)


if __name__ == "__main__":
    main()
