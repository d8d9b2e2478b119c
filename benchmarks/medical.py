"""CT contrast (../shared/realdata/medical/ct_contrast): held-out-patient AUROC of a DICOM classifier.

    python benchmarks/medical.py [--epochs 30] [--seeds 0 1 2]

100 real CT slices of 54 patients; the split is by patient (PatientID from the headers),
so no patient's slices are in two splits. Each seed gives another patient split.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from lightning.pytorch import Trainer, seed_everything

from domains.medical import DicomDataModule, MedicalClassificationTask
from domains.medical.ct_contrast import write_manifest

REAL = Path(__file__).resolve().parents[2] / "shared" / "realdata" / "medical" / "ct_contrast"


def run(seed: int, epochs: int, backbone: str, out: Path, pretrain: Callable | None = None) -> dict:
    """Train on the patient split of ``seed`` and test; ``pretrain(datamodule, encoder_args)``
    may return a weights file to start from (benchmarks/accuracy.py passes FCMAE)."""
    seed_everything(seed)
    dm = DicomDataModule(manifest=str(write_manifest(REAL, out / "manifest.csv")), label_columns=["contrast"],
                         patient_column=None, window=["abdomen", "lung", "bone"], image_size=128,
                         batch_size=16, val_fraction=0.2, test_fraction=0.3, seed=seed,
                         positive_classes=["True"], augment="flips", num_workers=0)
    dm.setup("fit")
    pretrain_s, pretrained = 0.0, False
    if pretrain is not None:
        start = time.perf_counter()
        pretrained = str(pretrain(dm, {"backbone": backbone}))
        pretrain_s = time.perf_counter() - start
    task = MedicalClassificationTask(backbone=backbone, pretrained=pretrained, in_chans=dm.in_chans, num_classes=2,
                                     class_names=dm.class_names, positive_classes=["True"], lr=1e-3,
                                     warmup_epochs=2, drop_path_rate=0.05, label_smoothing=0.1)
    trainer = Trainer(accelerator="cpu", max_epochs=epochs, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False, default_root_dir=out)
    start = time.perf_counter()
    trainer.fit(task, datamodule=dm)
    result = trainer.test(task, datamodule=dm, verbose=False)[0]
    fit_s = time.perf_counter() - start
    return {"sizes": dm.split_sizes(), "fit_s": fit_s, "finetune_s": fit_s, "pretrain_s": pretrain_s, **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--backbone", default="convnext_atto")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.backbone} from scratch, "
          f"{args.epochs} epochs, windows abdomen/lung/bone at 128 px")
    aurocs = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            r = run(seed, args.epochs, args.backbone, Path(tmp))
            aurocs.append(r["test/auroc"])
            print(f"seed {seed}: slices {r['sizes']}  test AUROC {r['test/auroc']:.3f}  "
                  f"AP(contrast) {r['test/ap_True']:.3f}  sensitivity {r['test/op_sensitivity']:.3f}  "
                  f"specificity {r['test/op_specificity']:.3f}  (fit {r['fit_s']:.0f} s)")
    print(f"held-out-patient AUROC: mean {statistics.mean(aurocs):.3f} over {len(aurocs)} patient splits "
          f"(min {min(aurocs):.3f}, max {max(aurocs):.3f})")


if __name__ == "__main__":
    main()
