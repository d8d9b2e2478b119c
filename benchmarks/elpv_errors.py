"""Where an ELPV model errs: test cells flagged defective, per expert defect probability.

    python benchmarks/elpv_errors.py CHECKPOINT [CHECKPOINT ...]

ELPV's experts rated each cell 0, 1/3, 2/3 or 1; the binary label is "probability >= 0.5", so the
1/3 cells count as functional and the 2/3 cells as defective. Accuracy and AUROC hide which of
them a model gets wrong. For each checkpoint of a binary ELPV run (``accuracy.py elpv --out``
keeps them) this prints, on that run's own test split, the share of cells of each level and cell
type flagged defective at the argmax and at the operating point stored in the checkpoint.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LEVELS = {0: "0 (functional)", 1: "1/3 (possibly)", 2: "2/3 (likely)", 3: "1 (defective)"}


def flag_rates(levels: np.ndarray, kinds: np.ndarray, flagged: np.ndarray) -> list[tuple[str, str, int, float]]:
    """(level, cell type, cells, share flagged) for every level x cell type present, and per level."""
    rows = []
    for level, name in LEVELS.items():
        for kind in (*sorted(set(kinds.tolist())), "all"):
            sel = (levels == level) & ((kinds == kind) if kind != "all" else True)
            if sel.any():
                rows.append((name, kind, int(sel.sum()), float(flagged[sel].mean())))
    return rows


def test_scores(checkpoint_path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(defect levels 0..3, cell types, P(defective), operating threshold) of the run's test cells."""
    import torch

    from core.export_checkpoint import load_checkpoint, rebuild_task
    from domains.manufacturing.elpv import ELPVDataModule, elpv_records

    checkpoint = load_checkpoint(checkpoint_path)
    hparams = {k: v for k, v in checkpoint["datamodule_hyper_parameters"].items() if not k.startswith("_")}
    if hparams.get("label_mode") != "binary":
        raise SystemExit(f"error: '{checkpoint_path}' is not a binary ELPV run")
    task = rebuild_task(checkpoint, checkpoint_path)
    dm = ELPVDataModule(**{**hparams, "num_workers": 0})
    dm.setup("test")
    paths, probs, types = elpv_records()
    level_of = {str(p): int(round(q * 3)) for p, q in zip(paths, probs, strict=True)}
    kind_of = {str(p): t for p, t in zip(paths, types, strict=True)}
    test = [dm.source.paths[i] for i in dm.splits["test"]]
    scores = []
    with torch.no_grad():
        for batch in dm.test_dataloader():
            scores.append(torch.softmax(task(batch["image"]), 1)[:, task.positive_index].sum(1))
    threshold = float(task.threshold)
    return (np.array([level_of[p] for p in test]), np.array([kind_of[p] for p in test]),
            torch.cat(scores).numpy(), 0.5 if np.isnan(threshold) else threshold)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+")
    args = parser.parse_args(argv)
    for path in args.checkpoints:
        levels, kinds, scores, threshold = test_scores(path)
        print(f"\n{path}\n\n| expert defect probability | cell type | test cells | flagged @argmax "
              f"| flagged @op (threshold {threshold:.3f}) |\n|---|---|---|---|---|")
        argmax = flag_rates(levels, kinds, scores >= 0.5)
        at_op = flag_rates(levels, kinds, scores >= threshold)
        for (level, kind, n, a), (_, _, _, o) in zip(argmax, at_op, strict=True):
            print(f"| {level} | {kind} | {n} | {a:.3f} | {o:.3f} |")


if __name__ == "__main__":
    main()
