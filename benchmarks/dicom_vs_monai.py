"""DICOM decode + windows: ours vs MONAI ``LoadImage(reader="PydicomReader")`` + ``ScaleIntensityRange``.

    python benchmarks/dicom_vs_monai.py [--seconds 5] [--rounds 3] [--quick] [--markdown FILE]

Both read the same files and produce the same three channels, the windows of
configs/medical/classification.yaml (mediastinum, lung, bone): ours is
``domains.medical.dicom.read_dicom(path, window=[...])`` (pydicom decode, modality LUT /
rescale slope and intercept, DICOM linear windows to [0, 1]); MONAI's is ``LoadImage`` with its
pydicom reader (which applies rescale slope/intercept too) and one ``ScaleIntensityRange(c - w/2,
c + w/2 -> 0, 1, clip)`` per window. The two window formulas differ by design (DICOM's linear
function maps ``c - 0.5 +- (w - 1)/2``): the check prints the largest difference per window and
requires it at most ``1 / (w - 1)``. Goal: ours >= 1x MONAI's files/s.

Files: ../shared/realdata/medical/ct_contrast (100 real CT slices) when present, else synthetic
512x512 CT slices written with pydicom. MONAI is not a dependency of the project:
``pip install 'convnext-domains[bench]'``.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import perf  # noqa: E402

GOAL = 1.0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    perf.common_args(parser, seconds=5.0, rounds=3)
    args = parser.parse_args(argv)
    perf.apply_common(args)
    table = perf.Table("DICOM decode + 3 windows: ours vs MONAI LoadImage(PydicomReader) + ScaleIntensityRange",
                       ["files", "windows", "ours files/s", "MONAI files/s", "ratio", "goal", "met"])
    if perf.tool_missing(table, "monai.transforms", "MONAI", args.markdown):
        return
    from monai.transforms import LoadImage, ScaleIntensityRange

    from domains.medical.dicom import WINDOW_PRESETS, read_dicom

    names = perf.load_config("configs/medical/classification.yaml")["data"]["init_args"]["window"]
    windows = [WINDOW_PRESETS[n] for n in names]
    load = LoadImage(reader="PydicomReader", image_only=True)
    scales = [ScaleIntensityRange(a_min=c - w / 2, a_max=c + w / 2, b_min=0.0, b_max=1.0, clip=True)
              for c, w in windows]

    def ours(path: str) -> np.ndarray:
        return read_dicom(path, window=names).image

    def theirs(path: str) -> np.ndarray:
        image = load(path)
        return np.stack([np.asarray(s(image)) for s in scales], axis=-1)

    with tempfile.TemporaryDirectory() as tmp:
        real = perf.REALDATA / "medical" / "ct_contrast" / "dicom_dir"
        if real.is_dir() and not args.quick:
            files = sorted(str(p) for p in real.glob("*.dcm"))
            what = f"{len(files)} real CT slices (ct_contrast, 512x512)"
        else:
            size, n = (64, 4) if args.quick else (512, 32)
            manifest = perf.write_ct_dicoms(Path(tmp) / "ct", n, size)
            files = sorted(str(p) for p in manifest.parent.glob("*.dcm"))
            what = f"{n} synthetic CT slices ({size}x{size} int16, rescale slope/intercept)"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            worst = np.zeros(len(windows))
            for path in files:
                a, b = ours(path), theirs(path)
                b = b.transpose(1, 0, 2)  # MONAI's default swap_ij gives (columns, rows)
                worst = np.maximum(worst, np.abs(a - b).reshape(-1, len(windows)).max(axis=0))
            tolerance = np.array([1.0 / (w - 1) for _, w in windows])
            check = ("max |ours - MONAI| per window over all files: " + ", ".join(
                f"{n} {d:.2e} (<= {t:.2e})" for n, d, t in zip(names, worst, tolerance, strict=True)))
            print(check, flush=True)
            if not (worst <= tolerance * (1 + 1e-4)).all():
                raise SystemExit(f"error: outputs differ beyond the window formulas' difference ({check})")
            a_files, b_files = itertools.cycle(files), itertools.cycle(files)
            rates = perf.interleaved({"ours": lambda: (ours(next(a_files)), 1.0)[1],
                                      "MONAI": lambda: (theirs(next(b_files)), 1.0)[1]},
                                     args.rounds, args.seconds, warmup=2)
    a, b = perf.median(rates["ours"]), perf.median(rates["MONAI"])
    table.add(what, "/".join(names), f"{a:.1f}", f"{b:.1f}", f"{a / b:.2f}", f">= {GOAL:g}", perf.meets(a / b, GOAL))
    table.notes += [f"check: {check}",
                    f"median of {args.rounds} interleaved rounds of ~{args.seconds:g} s per side after 2 "
                    "untimed files each; files in the OS cache (every file was read by the check first)"]
    perf.emit([table], args.markdown)


if __name__ == "__main__":
    main()
