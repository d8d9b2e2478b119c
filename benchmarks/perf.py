"""Shared pieces of the performance benchmarks (``make bench``): the machine line, interleaved
rate measurements with a time cap, markdown tables, and data stand-ins when real data is absent.

Every figure of the suite is a ratio of two rates measured in one process: the rounds alternate
between the two sides (A, B, A, B, ...) after untimed warm-up, so machine noise hits both alike,
and the table gives the median over rounds.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REALDATA = ROOT.parent / "shared" / "realdata"

# A rate measurement: runs some work and returns the number of samples (or files, FLOPs) it did.
Work = Callable[[], float]


def version(package: str) -> str:
    """Installed version of ``package``, or ``-`` when it is not installed."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "-"


def _ram_gib() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return float("nan")


def _gpu() -> str:
    import torch

    if torch.cuda.is_available():
        return ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    return "none"


def machine_line() -> str:
    """Date (UTC) and machine: cores, RAM, GPU, torch threads and the library versions."""
    import torch

    versions = ", ".join(f"{p} {version(p)}" for p in
                         ("torch", "timm", "onnxruntime", "torchgeo", "monai", "rasterio", "pydicom"))
    return (f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC · {platform.machine()}, "
            f"{os.cpu_count()} cores, {_ram_gib():.0f} GiB RAM, GPU: {_gpu()}; Python "
            f"{platform.python_version()}, {versions}; {torch.get_num_threads()} torch threads")


def rate(work: Work, seconds: float, min_calls: int = 1) -> float:
    """Units per second of ``work`` called repeatedly for about ``seconds`` (at least
    ``min_calls`` calls); each call returns the units it processed."""
    done, calls = 0.0, 0
    start = time.perf_counter()
    while calls < min_calls or time.perf_counter() - start < seconds:
        done += work()
        calls += 1
    return done / (time.perf_counter() - start)


def interleaved(sides: dict[str, Work], rounds: int, seconds: float, warmup: int = 1,
                log: Callable[[str], None] = print) -> dict[str, list[float]]:
    """Rates of each side over ``rounds`` alternating rounds, after ``warmup`` untimed calls each."""
    for work in sides.values():
        for _ in range(warmup):
            work()
    rates: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(rounds):
        for name, work in sides.items():
            rates[name].append(rate(work, seconds))
            log(f"  round {r + 1}/{rounds} {name}: {rates[name][-1]:.2f}/s")
    return rates


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def meets(ratio: float, goal: float, higher_is_better: bool = True) -> str:
    ok = ratio >= goal if higher_is_better else ratio <= goal
    return "yes" if ok else "**no**"


@dataclass
class Table:
    """A markdown table with a title, the machine line and notes below it."""

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    machine: str = field(default_factory=machine_line)

    def add(self, *cells: Any) -> None:
        self.rows.append([c if isinstance(c, str) else f"{c:.3g}" if isinstance(c, float) else str(c)
                          for c in cells])

    def markdown(self) -> str:
        lines = [f"#### {self.title}", "", self.machine, "",
                 "| " + " | ".join(self.columns) + " |", "|" + "---|" * len(self.columns)]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        if self.notes:
            lines += [""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"


def parse_markdown_tables(text: str) -> list[list[dict[str, str]]]:
    """Rows of every markdown table in ``text`` as dicts keyed by the header cells."""
    tables: list[list[dict[str, str]]] = []
    header: list[str] | None = None
    for line in text.splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
            tables.append([])
        elif not all(set(c) <= {"-", ":"} for c in cells):
            tables[-1].append(dict(zip(header, cells, strict=True)))
    return tables


def emit(tables: Sequence[Table], markdown: str | None) -> None:
    """Print the tables; with ``markdown`` also write them there (atomically)."""
    from core.atomic import write_atomic

    text = "\n".join(t.markdown() for t in tables)
    print()
    print(text)
    if markdown:
        write_atomic(Path(markdown), lambda tmp: tmp.write_text(text))


def tool_missing(table: Table, module: str, name: str, markdown: str | None) -> bool:
    """True (after noting and emitting the skip) when ``module``, a tool compared against that
    only the ``bench`` extra installs, cannot be imported."""
    try:
        importlib.import_module(module)
        return False
    except ImportError:
        note = f"skipped: {name} is not installed (pip install 'convnext-domains[bench]')"
        table.notes.append(note)
        print(note)
        emit([table], markdown)
        return True


def common_args(parser: argparse.ArgumentParser, seconds: float = 8.0, rounds: int = 3) -> None:
    parser.add_argument("--seconds", type=float, default=seconds,
                        help="time cap of one measurement (one side, one round)")
    parser.add_argument("--rounds", type=int, default=rounds, help="interleaved rounds (median)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny inputs and sub-second measurements (a smoke run, not a benchmark)")
    parser.add_argument("--markdown", help="also write the table(s) to this file")
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads of torch and ONNX Runtime (default: torch's; --quick: 1, "
                             "since OpenMP threads spin badly on a loaded machine)")


def apply_common(args: argparse.Namespace) -> None:
    """Thread count and the smoke-run settings of :func:`common_args`."""
    import torch

    if args.quick:
        args.seconds, args.rounds = min(args.seconds, 0.2), 1
        args.threads = args.threads or 1
    if args.threads:
        torch.set_num_threads(args.threads)
    args.threads = torch.get_num_threads()


# ---- configs --------------------------------------------------------------------------------
def load_config(path: str | Path) -> dict[str, Any]:
    """A shipped LightningCLI YAML as a dict (read, not run: the benchmark builds the objects)."""
    import yaml

    return yaml.safe_load((ROOT / path).read_text())


def build(spec: dict[str, Any], **overrides: Any) -> Any:
    """Instantiate a ``class_path``/``init_args`` block with ``overrides`` on top."""
    module, _, name = spec["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    return cls(**{**spec.get("init_args", {}), **overrides})


# ---- stand-ins for absent real data -----------------------------------------------------------
def write_gray_pngs(folder: Path, n: int, size: int = 300, seed: int = 0) -> Path:
    """``folder/{functional,defective}/*.png``: 8-bit gray cells shaped like ELPV's (300x300)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(n):
        cls = ("functional", "defective")[i % 2]
        (folder / cls).mkdir(parents=True, exist_ok=True)
        yy, xx = np.mgrid[0:size, 0:size]
        cell = 120 + 60 * np.sin(xx / 17.0) * np.cos(yy / 23.0) + rng.normal(0, 20, (size, size))
        Image.fromarray(np.clip(cell, 0, 255).astype(np.uint8), mode="L").save(folder / cls / f"cell_{i:04d}.png")
    return folder


def write_ct_dicoms(folder: Path, n: int, size: int = 512, seed: int = 0) -> Path:
    """CT slices written with plain pydicom (int16 stored values, RescaleSlope 1, RescaleIntercept
    -1024, a file window) and ``manifest.csv`` (path,label,patient_id); no real identifiers."""
    from pydicom import uid
    from pydicom.dataset import Dataset, FileMetaDataset

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size]
    body = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (0.4 * size) ** 2
    rows = ["path,label,patient_id"]
    for i in range(n):
        hu = np.where(body, 40 + rng.normal(0, 30, (size, size)), -1000.0)
        stored = np.clip(hu + 1024, 0, 4095).astype(np.int16)
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
        ds.SOPClassUID = uid.CTImageStorage
        ds.SOPInstanceUID = uid.generate_uid()
        ds.Modality = "CT"
        ds.set_pixel_data(stored, "MONOCHROME2", 12)
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.WindowCenter, ds.WindowWidth = 40, 400
        ds.PixelSpacing = [0.7, 0.7]
        path = folder / f"slice_{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        rows.append(f"{path.name},{('no', 'yes')[i % 2]},p{i // 2}")
    (folder / "manifest.csv").write_text("\n".join(rows) + "\n")
    return folder / "manifest.csv"


def write_scene(folder: Path, width: int, height: int, bands: int = 6, seed: int = 0) -> dict[str, Path]:
    """A ``bands``-band uint16 GeoTIFF (UTM, 10 m, no nodata) and a label raster on its grid
    (codes 1..3 in 32 px fields, 0 unlabelled outside them)."""
    import rasterio
    from rasterio.transform import from_origin

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    fields = np.kron(rng.integers(0, 4, (-(-height // 32), -(-width // 32))),
                     np.ones((32, 32), dtype=np.int64))[:height, :width].astype(np.uint8)
    image = (1000 + 800 * fields[None].astype(np.float64) * (1 + np.arange(bands))[:, None, None] / bands
             + rng.normal(0, 100, (bands, height, width)))
    image = np.clip(image, 1, 65535).astype(np.uint16)
    transform = from_origin(500000.0, 4500000.0, 10.0, 10.0)
    common = {"driver": "GTiff", "width": width, "height": height, "crs": "EPSG:32633",
              "transform": transform}
    scene, labels = folder / "scene.tif", folder / "labels.tif"
    with rasterio.open(scene, "w", count=bands, dtype="uint16", **common) as dst:
        dst.write(image)
        dst.descriptions = tuple(["blue", "green", "red", "nir", "swir1", "swir2"][:bands])
    with rasterio.open(labels, "w", count=1, dtype="uint8", **common) as dst:
        dst.write(fields[None])
    return {"image": scene, "labels": labels}
