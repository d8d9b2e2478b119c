"""Lightning overhead: our task under ``Trainer.fit`` vs a plain PyTorch loop, same work.

Both sides train the same ConvNeXt (same initial weights), on the same in-memory batches, with
the same AdamW param groups (layer decay, no decay on norms/biases) and warmup+cosine schedule.
Rounds are interleaved (plain, Lightning, plain, ...) so machine noise hits both alike. The time
per step is measured from the end of warm-up step ``W`` to the end of the last step and includes
fetching the batch, forward, backward, optimizer and scheduler step, and Lightning's logging.

    python benchmarks/overhead.py [--steps 30] [--warmup 5] [--rounds 3] [--batch 32] [--size 128]
        [--quick] [--markdown FILE]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.loggers import CSVLogger
from torch.nn import functional as F
from torch.optim import AdamW
from torch.utils.data import DataLoader, Dataset

from core.classification import ClassificationTask
from core.recipe import recipe_param_groups, warmup_cosine

sys.path.insert(0, str(Path(__file__).resolve().parent))
import perf  # noqa: E402

GOAL = 1.03


class Batches(Dataset):
    def __init__(self, n: int, size: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 3, size, size, generator=g)
        self.y = torch.randint(0, 2, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.x[i], "label": self.y[i]}


class StepClock(Callback):
    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.end = warmup, 0.0, 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx == self.warmup - 1:
            self.start = time.perf_counter()
        self.end = time.perf_counter()


def plain_loop(task: ClassificationTask, loader: DataLoader, steps: int, warmup: int) -> float:
    h = task.hparams
    groups = recipe_param_groups(task.backbone.model, h.lr, h.weight_decay, task.effective_layer_decay)
    opt = AdamW(groups, lr=h.lr, betas=tuple(h.betas))
    sched = warmup_cosine(opt, round(steps * h.warmup_epochs), steps, h.min_lr_ratio)
    task.train()
    start = 0.0
    it = iter(loader)
    for step in range(steps):
        batch = next(it)
        loss = F.cross_entropy(task(batch["image"]), batch["label"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step == warmup - 1:
            start = time.perf_counter()
    return (time.perf_counter() - start) / (steps - warmup)


def lightning_loop(task: ClassificationTask, loader: DataLoader, steps: int, warmup: int,
                   progress_bar: bool, log_dir: str) -> float:
    clock = StepClock(warmup)
    callbacks: list[Callback] = [clock] + ([RichProgressBar()] if progress_bar else [])
    trainer = Trainer(accelerator="cpu", max_steps=steps, max_epochs=1, precision="32-true",
                      logger=CSVLogger(log_dir), callbacks=callbacks, enable_checkpointing=False,
                      enable_progress_bar=progress_bar, enable_model_summary=False,
                      num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(task, train_dataloaders=loader)
    return (clock.end - clock.start) / (steps - warmup)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="convnext_atto")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's; --quick: 1)")
    parser.add_argument("--quick", action="store_true", help="a smoke run on tiny inputs")
    parser.add_argument("--markdown", help="also write the table to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.warmup, args.rounds, args.batch, args.size = 4, 2, 1, 4, 32
        args.threads = args.threads or 1
    if args.threads:
        torch.set_num_threads(args.threads)
    args.threads = torch.get_num_threads()
    torch.manual_seed(0)

    data = Batches(args.steps * args.batch, args.size)
    # warmup_epochs=0.1 of the single epoch: the schedule is exercised on both sides.
    template = ClassificationTask(backbone=args.backbone, num_classes=2, warmup_epochs=0.1,
                                  drop_path_rate=0.0)
    import tempfile

    times: dict[str, list[float]] = {"plain PyTorch loop": [], "Lightning task": [],
                                     "Lightning task + RichProgressBar": []}
    with tempfile.TemporaryDirectory() as log_dir:
        for r in range(args.rounds):
            for name in times:
                task = copy.deepcopy(template)
                loader = DataLoader(data, batch_size=args.batch, shuffle=False)
                if name == "plain PyTorch loop":
                    t = plain_loop(task, loader, args.steps, args.warmup)
                else:
                    t = lightning_loop(task, loader, args.steps, args.warmup,
                                       progress_bar="Rich" in name, log_dir=log_dir)
                times[name].append(t)
                print(f"round {r + 1}/{args.rounds} {name}: {t * 1000:.1f} ms/step", flush=True)

    base = statistics.median(times["plain PyTorch loop"])
    print()
    print(f"{args.backbone}, batch {args.batch}, {args.size}px, {args.steps - args.warmup} timed "
          f"steps x {args.rounds} interleaved rounds, {args.threads} threads, torch {torch.__version__}")
    print(f"{'loop':<36}{'median ms/step':>16}{'min ms/step':>14}{'ratio':>8}")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"{name:<36}{med * 1000:>16.1f}{min(values) * 1000:>14.1f}{med / base:>8.3f}")
    print("goal: ratio <= 1.03 for the Lightning task")
    table = perf.Table(f"Training step: Lightning task vs a plain PyTorch loop ({args.backbone}, batch "
                       f"{args.batch}, {args.size} px, fp32)",
                       ["loop", "median ms/step", "min ms/step", "ratio to plain", "goal", "met"])
    for name, values in times.items():
        ratio = statistics.median(values) / base
        plain = name == "plain PyTorch loop"
        table.add(name, f"{statistics.median(values) * 1000:.1f}", f"{min(values) * 1000:.1f}", f"{ratio:.3f}",
                  "-" if plain else f"<= {GOAL:g}", "-" if plain else perf.meets(ratio, GOAL, higher_is_better=False))
    table.notes.append(f"{args.steps - args.warmup} timed steps after {args.warmup} untimed, x {args.rounds} "
                       f"interleaved rounds (median); same weights, batches, AdamW groups and schedule; "
                       f"{args.threads} threads")
    perf.emit([table], args.markdown)


if __name__ == "__main__":
    main()
