"""Accuracy protocols on real data, mean ± std over seeds, with the wall time they took.

    python benchmarks/accuracy.py elpv   [--config configs/manufacturing/elpv_best.yaml]
                                         [--pretrain-config configs/manufacturing/elpv_pretrain.yaml]
                                         [--label-mode binary|4class] [--seeds 0 1 2] [--set KEY=VALUE ...]
                                         [--pretrain-set KEY=VALUE ...]
    python benchmarks/accuracy.py ct     [--epochs 30] [--pretrain-epochs 0]
    python benchmarks/accuracy.py landsat [--epochs 30] [--pretrain-epochs 0] [--tile 64] [--input-scale 1]
    add --results benchmarks/RESULTS.md to append the table, the date and the machine there.

ELPV (the ``elpv-dataset`` package, ``pip install 'convnext-domains[demo]'``): the paper's
protocol, 25% stratified test split, 10% of all cells for validation, one split per seed; the
binary label is "defect probability >= 0.5". Test accuracy is at the argmax; the false-reject
rate is at the operating point chosen on validation for 95% defect recall. With
``--pretrain-config`` each seed first runs FCMAE on that seed's training split (no labels) and
fine-tunes from the weights it wrote. Everything runs through the same LightningCLI configs a
user runs; ``--set`` adds command-line overrides to fine-tuning (``--set trainer.max_epochs=10``),
``--pretrain-set`` to pretraining.

CT contrast and NC Landsat (../shared/realdata) use the protocols of benchmarks/medical.py and
benchmarks/agriculture.py (patient splits; spatial-block splits), one split per seed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402
from lightning.pytorch import Trainer, seed_everything  # noqa: E402

from core.configs import resolve_config_args  # noqa: E402
from core.pretrain import WEIGHTS_FILE, FCMAETask  # noqa: E402

ELPV_METRICS = {"acc": "accuracy", "balanced_acc": "balanced accuracy", "auroc": "AUROC",
                "op_false_reject_rate": "false-reject rate @95% recall",
                "op_defect_recall": "defect recall @op"}


# ---- ELPV through the CLI configs ----------------------------------------------------------
def _cli(args: list[str]):
    from core.cli import run_cli

    return run_cli(resolve_config_args(args), run=False)


def _overrides(pairs: Sequence[str]) -> list[str]:
    out: list[str] = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"error: --set {pair!r} is not KEY=VALUE (e.g. trainer.max_epochs=10)")
        out += [f"--{key}", value]
    return out


def elpv_run(seed: int, config: str, pretrain_config: str | None, label_mode: str, sets: Sequence[str],
             out: Path, pretrain_sets: Sequence[str] = ()) -> dict:
    """Optional FCMAE pretraining, then fine-tuning and testing, on the split of ``seed``."""
    common = [f"--seed_everything={seed}", f"--data.init_args.seed={seed}",
              f"--data.init_args.label_mode={label_mode}", "--trainer.enable_progress_bar=false",
              "--trainer.enable_model_summary=false"]
    result: dict = {"pretrain_s": 0.0}
    pretrained: list[str] = []
    if pretrain_config:
        cli = _cli(["--config", pretrain_config, *common, f"--trainer.default_root_dir={out}",
                    f"--trainer.logger.init_args.save_dir={out}", f"--trainer.logger.init_args.name=pretrain_{seed}",
                    *_overrides(pretrain_sets)])
        start = time.perf_counter()
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        result["pretrain_s"] = time.perf_counter() - start
        pretrained = [f"--model.init_args.pretrained={Path(cli.trainer.log_dir) / WEIGHTS_FILE}"]
    cli = _cli(["--config", config, *common, f"--trainer.logger.init_args.save_dir={out}",
                f"--trainer.logger.init_args.name=finetune_{seed}", *pretrained, *_overrides(sets)])
    start = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    result["finetune_s"] = time.perf_counter() - start
    cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path="best", verbose=False)
    report = json.loads((Path(cli.trainer.log_dir) / "metrics.json").read_text())
    result.update({k: v for k, v in report["metrics"].items() if k in ELPV_METRICS})
    result["test_cells"] = report["num_samples"]
    return result


# ---- CT contrast and NC Landsat --------------------------------------------------------------
def fcmae_weights(datamodule, encoder: dict, epochs: int, patch_size: int, out: Path) -> Path:
    """FCMAE on the datamodule's training split; returns the encoder weights file."""
    task = FCMAETask(**encoder, in_chans=datamodule.in_chans, patch_size=patch_size, reconstructions=0)
    trainer = Trainer(accelerator="cpu", max_epochs=epochs, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False, limit_val_batches=0,
                      default_root_dir=out)
    trainer.fit(task, datamodule=datamodule)
    return out / WEIGHTS_FILE


def ct_run(seed: int, epochs: int, pretrain_epochs: int, out: Path) -> dict:
    import medical

    pretrain: Callable | None = None
    if pretrain_epochs:
        def pretrain(dm, encoder):
            return fcmae_weights(dm, encoder, pretrain_epochs, 32, out)
    return medical.run(seed, epochs, "convnext_atto", out, pretrain=pretrain)


def landsat_run(seed: int, epochs: int, pretrain_epochs: int, out: Path, tile: int = 64,
                input_scale: int = 1) -> dict:
    import agriculture

    pretrain: Callable | None = None
    if pretrain_epochs:
        def pretrain(dm, encoder):
            return fcmae_weights(dm, encoder, pretrain_epochs, 32, out)
    result = agriculture.nc_landsat(out, epochs, "convnext_atto", tile, 64, seed=seed, pretrain=pretrain,
                                    input_scale=input_scale)
    baseline = {k.replace("test/", "baseline/"): v for k, v in result["baseline"].items()}
    return {**result, **result["test"], **baseline}


# ---- reporting -------------------------------------------------------------------------------
def mean_std(values: Sequence[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def machine() -> str:
    import onnxruntime  # noqa: F401  (optional; reported when present)
    import timm

    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, "
            f"no GPU used; Python {platform.python_version()}, torch {torch.__version__}, "
            f"timm {timm.__version__}, {torch.get_num_threads()} torch threads")


def table(rows: list[dict], columns: dict[str, str]) -> list[str]:
    present = [k for k in columns if all(k in r for r in rows)]
    lines = ["| seed | " + " | ".join(columns[k] for k in present) + " | pretrain | fine-tune |",
             "|---" * (len(present) + 3) + "|"]
    for r in rows:
        lines.append(f"| {r['seed']} | " + " | ".join(f"{r[k]:.3f}" for k in present)
                     + f" | {r['pretrain_s'] / 60:.1f} min | {r['finetune_s'] / 60:.1f} min |")
    lines.append("| **mean ± std** | " + " | ".join(mean_std([r[k] for r in rows]) for k in present)
                 + f" | {statistics.mean(r['pretrain_s'] for r in rows) / 60:.1f} min"
                 + f" | {statistics.mean(r['finetune_s'] for r in rows) / 60:.1f} min |")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("protocol", choices=["elpv", "ct", "landsat"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--config", default="configs/manufacturing/elpv_best.yaml", help="ELPV fine-tuning config")
    parser.add_argument("--pretrain-config", default=None, help="ELPV: FCMAE config run before fine-tuning")
    parser.add_argument("--label-mode", default="binary", choices=["binary", "4class"])
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="ELPV: extra config override, repeatable")
    parser.add_argument("--pretrain-set", dest="pretrain_sets", action="append", default=[], metavar="KEY=VALUE",
                        help="ELPV: override of the pretraining config, repeatable")
    parser.add_argument("--epochs", type=int, default=30, help="CT / Landsat fine-tuning epochs")
    parser.add_argument("--pretrain-epochs", type=int, default=0, help="CT / Landsat FCMAE epochs (0: none)")
    parser.add_argument("--tile", type=int, default=64, help="Landsat tile size in scene pixels (<= 64, the block)")
    parser.add_argument("--input-scale", type=int, default=1,
                        help="Landsat: the task's input_scale (tiles upsampled this many times)")
    parser.add_argument("--results", default=None, help="append the table to this markdown file")
    parser.add_argument("--out", default=None, help="keep the runs here (default: a temporary folder)")
    args = parser.parse_args(argv)
    if args.protocol == "landsat" and args.pretrain_epochs and (args.input_scale > 1 or args.tile % 32):
        parser.error("Landsat FCMAE pretraining needs --tile a multiple of 32 and --input-scale 1")

    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        for seed in args.seeds:
            seed_everything(seed)
            run_out = out / f"{args.protocol}_{seed}"
            run_out.mkdir(parents=True, exist_ok=True)
            if args.protocol == "elpv":
                r = elpv_run(seed, args.config, args.pretrain_config, args.label_mode, args.sets, run_out,
                             args.pretrain_sets)
            elif args.protocol == "ct":
                r = ct_run(seed, args.epochs, args.pretrain_epochs, run_out)
            else:
                r = landsat_run(seed, args.epochs, args.pretrain_epochs, run_out, args.tile, args.input_scale)
            rows.append({"seed": seed, **r})
            print(json.dumps({k: v for k, v in rows[-1].items() if not isinstance(v, dict)}), flush=True)

    if args.protocol == "elpv":
        title = (f"ELPV {args.label_mode}, config {args.config}"
                 + (f" after FCMAE ({args.pretrain_config})" if args.pretrain_config else ", no pretraining")
                 + (f", pretraining overrides {' '.join(args.pretrain_sets)}" if args.pretrain_sets else "")
                 + (f", overrides {' '.join(args.sets)}" if args.sets else "")
                 + f"; {rows[0]['test_cells']} test cells per split")
        columns = ELPV_METRICS
    elif args.protocol == "ct":
        title = (f"CT contrast, held-out patients, convnext_atto, {args.epochs} epochs"
                 + (f" after {args.pretrain_epochs} FCMAE epochs" if args.pretrain_epochs else " from scratch"))
        columns = {"test/auroc": "AUROC", "test/op_sensitivity": "sensitivity @op",
                   "test/op_specificity": "specificity @op"}
    else:
        title = (f"NC Landsat 7, held-out 64 px spatial blocks, convnext_atto + UPerNet, {args.tile} px tiles"
                 + (f" upsampled {args.input_scale}x (input_scale)" if args.input_scale > 1 else "")
                 + f", {args.epochs} epochs"
                 + (f" after {args.pretrain_epochs} FCMAE epochs" if args.pretrain_epochs else " from scratch")
                 + "; baseline: per-pixel logistic regression on the same training pixels")
        columns = {"test/acc": "overall accuracy", "test/miou": "mIoU",
                   "baseline/acc": "baseline OA", "baseline/miou": "baseline mIoU"}
    lines = [f"### {title}", "", f"{date.today().isoformat()} · {machine()} · "
             f"`python benchmarks/accuracy.py {' '.join(argv if argv is not None else sys.argv[1:])}`", "",
             *table(rows, columns), ""]
    print("\n".join(lines))
    if args.results:
        path = Path(args.results)
        with path.open("a") as f:
            f.write("\n".join(lines) + "\n")
        print(f"appended to {path}")


if __name__ == "__main__":
    main()
