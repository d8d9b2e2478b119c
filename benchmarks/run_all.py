"""The performance suite (``make bench``): run every benchmark, write their tables to RESULTS.md.

    python benchmarks/run_all.py [--results benchmarks/RESULTS.md] [--only pipelines flops ...] [--quick]

Each benchmark runs in its own process (a crash is reported and the others still run) and
writes its tables; they replace the performance section of RESULTS.md, between the markers
below, in one atomic write. Everything else in the file (the accuracy results) is kept; a
file without the markers gets the section appended. The section ends with the list of figures
that miss their goal. The exit status is 1 when a benchmark failed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import perf  # noqa: E402

HERE = Path(__file__).resolve().parent
START = "<!-- performance suite: written by `make bench` (benchmarks/run_all.py); replaced on each run -->"
END = "<!-- end of performance suite -->"

# name -> arguments of a full run (a --quick run passes only --quick).
SUITE: dict[str, list[str]] = {
    "overhead": [],
    "pipelines": [],
    "geotiff_vs_torchgeo": [],
    "dicom_vs_monai": [],
    "inference": ["--backbones", "convnext_atto", "convnext_tiny"],
    "flops": [],
}


def replace_section(text: str, section: str) -> str:
    """``text`` with the part between :data:`START` and :data:`END` replaced by ``section``
    (appended, with the markers, when they are absent)."""
    block = f"{START}\n{section.strip()}\n{END}\n"
    if START in text and END in text.split(START, 1)[1]:
        before, rest = text.split(START, 1)
        return before + block + rest.split(END, 1)[1].lstrip("\n")
    return text.rstrip("\n") + "\n\n" + block


def _figure(row: dict[str, str]) -> str:
    """The figure a goal applies to: the row's ratio (or utilisation) cell."""
    for key, value in row.items():
        if "ratio" in key or "utilisation" in key or key.endswith("/ eager"):
            return f"{key} {value}"
    return "?"


def misses(markdown: str) -> list[str]:
    """One line per table row whose ``met`` cell says no: its first cells, figure and goal."""
    out = []
    for table in perf.parse_markdown_tables(markdown):
        for row in table:
            if row.get("met") == "**no**":
                first = list(row.values())[:2]
                out.append(f"{' / '.join(first)}: {_figure(row)}, goal {row.get('goal', '?')}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=str(HERE / "RESULTS.md"))
    parser.add_argument("--only", nargs="+", choices=list(SUITE), default=list(SUITE))
    parser.add_argument("--quick", action="store_true", help="smoke runs of every benchmark (tiny inputs)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    parts, failures = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only:
            out = Path(tmp) / f"{name}.md"
            extra = ["--quick"] if args.quick else SUITE[name]
            print(f"== benchmarks/{name}.py {' '.join(extra)}", flush=True)
            t0 = time.perf_counter()
            done = subprocess.run([sys.executable, str(HERE / f"{name}.py"), *extra, "--markdown", str(out)],
                                  stderr=subprocess.PIPE, text=True)
            print(f"   {time.perf_counter() - t0:.0f} s", flush=True)
            if done.returncode != 0 or not out.is_file():
                tail = (done.stderr or "").strip().splitlines()[-1:] or ["(no message)"]
                failures.append(f"benchmarks/{name}.py failed (exit {done.returncode}): {tail[0]}")
                print(done.stderr[-3000:], file=sys.stderr)
                continue
            parts.append(f"### `benchmarks/{name}.py{(' ' + ' '.join(extra)) if extra else ''}`\n\n"
                         + out.read_text())
    wall = time.perf_counter() - started
    body = "\n".join(parts)
    missed = misses(body)
    summary = (["**Figures that miss their goal:**", ""] + [f"- {m}" for m in missed] if missed
               else ["Every figure meets its goal."])
    section = "\n".join([
        "## Performance suite (issue 12): `make bench`",
        "",
        f"Written by `python benchmarks/run_all.py{' --quick' if args.quick else ''}` on "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC in {wall / 60:.1f} min (benchmarks only, "
        "not the install). Every figure is a ratio of two rates measured in the same process, "
        "in interleaved rounds after warm-up (median); each table names its machine.",
        "",
        *([f"- {f}" for f in failures] + [""] if failures else []),
        body,
        *summary,
    ])
    from core.atomic import write_atomic

    results = Path(args.results)
    text = results.read_text() if results.is_file() else "# Benchmark results\n"
    write_atomic(results, lambda tmp: tmp.write_text(replace_section(text, section)))
    print(f"wrote the performance section of {results} ({wall / 60:.1f} min)")
    for line in failures:
        print(f"error: {line}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
