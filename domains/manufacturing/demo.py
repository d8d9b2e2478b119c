"""``make demo``: fine-tune a ConvNeXt on the real ELPV solar-cell images and report test metrics.

Trains with ``configs/manufacturing/elpv.yaml``, tests the best checkpoint, leaves the
checkpoint, ``metrics.json`` and plots in the run's log directory, exports the model as a
bundle and runs the bundle on a few test cells in a process where torch cannot be imported.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from core.cli import run_cli
from core.configs import shipped_config
from core.export import export_bundle
from core.torch_free import run_without_torch

CONFIG = shipped_config("manufacturing/elpv.yaml")


def summary_table(report: dict, elapsed_s: float) -> Table:
    m = report["metrics"]
    table = Table(title=f"ELPV test split ({report['num_samples']} cells), trained in {elapsed_s / 60:.1f} min")
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = [
        ("accuracy", m.get("acc")),
        ("balanced accuracy", m.get("balanced_acc")),
        ("AUROC", m.get("auroc")),
        ("F1 (macro)", m.get("f1")),
        ("operating-point threshold (from validation)", m.get("op_threshold")),
        ("defect recall at operating point", m.get("op_defect_recall")),
        ("false-reject rate at operating point", m.get("op_false_reject_rate")),
    ]
    for name, value in rows:
        if value is not None:
            table.add_row(name, f"{value:.4f}")
    return table


def main(argv: list[str] | None = None) -> None:
    args = ["--config", str(CONFIG), *(argv if argv is not None else sys.argv[1:])]
    cli = run_cli(args, run=False)
    start = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    elapsed = time.perf_counter() - start
    cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path="best")
    log_dir = Path(cli.trainer.log_dir)
    report = json.loads((log_dir / "metrics.json").read_text())
    console = Console()
    console.print(summary_table(report, elapsed))
    best = cli.trainer.checkpoint_callback.best_model_path
    console.print(f"best checkpoint: {best}")
    console.print(f"report and plots: {log_dir}/metrics.json, confusion_matrix.png, roc_curve.png")

    bundle = export_bundle(best, log_dir / "bundle", overwrite=True)
    parity = json.loads((bundle / "metadata.json").read_text())["parity"]["max_abs_diff"]
    console.print(f"exported bundle: {bundle} (ONNX vs Lightning max |dp| = {parity:.2e})")
    dm = cli.datamodule
    test = dm.splits["test"]
    picked = [i for label in (0, 1) for i in test[dm.source.labels[test] == label][:4]]
    result = run_without_torch(["predict", "--bundle", str(bundle), *(dm.source.ids[i] for i in picked),
                                "--out", str(log_dir / "bundle_predictions")])
    if result.returncode != 0:
        raise SystemExit(f"torch-free prediction failed:\n{result.stderr[-2000:]}")
    table = Table(title="Bundle on 8 test cells, onnxruntime only (torch blocked)")
    for column in ("cell", "true class", "P(defective)", "decision"):
        table.add_column(column)
    with (log_dir / "bundle_predictions" / "predictions.csv").open() as f:
        for i, row in zip(picked, csv.DictReader(f), strict=True):
            table.add_row(Path(row["id"]).name, dm.class_names[int(dm.source.labels[i])],
                          f"{float(row['prob_defective']):.3f}", row["decision"])
    console.print(table)
    console.print(f"predictions: {log_dir / 'bundle_predictions'}/predictions.csv, predictions.json")


if __name__ == "__main__":
    main()
