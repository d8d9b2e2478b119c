"""The performance suite (`make bench`): smoke runs on tiny inputs, tables that parse, the
RESULTS.md section replaced while everything else stays. No timing thresholds: only that the
figures exist and are positive."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))

import elpv_errors  # noqa: E402
import perf  # noqa: E402
import pipelines  # noqa: E402
import run_all  # noqa: E402

ACCURACY = "# Benchmark results\n\n## Accuracy without ImageNet weights (issue 9)\n\n| seed | AUROC |\n|---|---|\n| 0 | 0.237 |\n"
OLD = f"{run_all.START}\n## Performance suite\n\nstale table from an older run\n{run_all.END}\n"
RATIO_COLUMNS = ("ratio", "ratio to plain", "ORT / eager", "utilisation (vs matmul)")


def _number(cell: str) -> float:
    return float(cell.replace("%", "").replace("*", "").strip())


@pytest.fixture(scope="module")
def quick_suite(tmp_path_factory):
    """``run_all.py --quick`` over a RESULTS.md with accuracy results and a stale section after them."""
    results = tmp_path_factory.mktemp("bench") / "RESULTS.md"
    results.write_text(ACCURACY + "\n" + OLD + "\ntrailing notes kept\n")
    done = subprocess.run([sys.executable, str(BENCH / "run_all.py"), "--quick", "--results", str(results)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return results.read_text()


def test_quick_suite_keeps_the_rest_and_replaces_the_section(quick_suite):
    assert quick_suite.startswith(ACCURACY)
    assert quick_suite.rstrip().endswith("trailing notes kept")
    assert "stale table" not in quick_suite
    assert quick_suite.count(run_all.START) == 1 and quick_suite.count(run_all.END) == 1
    for name in run_all.SUITE:
        assert f"### `benchmarks/{name}.py --quick`" in quick_suite


def test_quick_suite_tables_parse_with_positive_ratios(quick_suite):
    section = quick_suite.split(run_all.START)[1].split(run_all.END)[0]
    tables = perf.parse_markdown_tables(section)
    # overhead, pipelines, torchgeo, MONAI, inference speed + INT8 parity, flops
    assert len(tables) == 7
    ratios = []
    # Without the bench extra (make test installs dev only) the torchgeo/MONAI comparisons print
    # their header and a skipped line instead of rows.
    missing = [tool for tool in ("torchgeo", "monai") if importlib.util.find_spec(tool) is None]
    assert sum(not table for table in tables) == len(missing)
    for tool in missing:
        assert f"skipped: {'MONAI' if tool == 'monai' else tool} is not installed" in section
    for table in tables:
        for row in table:
            for column in RATIO_COLUMNS:
                if column in row and row[column] not in ("-", ""):
                    ratios.append(_number(row[column]))
            if "met" in row:
                assert row["met"] in ("yes", "**no**", "-")
    assert len(ratios) >= 12 and all(r > 0 for r in ratios)
    # every table is headed with the date and the machine
    machine = re.findall(r"^\d{4}-\d\d-\d\d \d\d:\d\d UTC · .*cores, \d+ GiB RAM, GPU: .*torch .*timm .*"
                         r"onnxruntime .*torchgeo .*monai .*$", section, flags=re.M)
    assert len(machine) == len(tables)
    rows = next(t for t in tables if t and "pipeline samples/s" in t[0])
    assert [r["pipeline"] for r in rows] == [label for label, _ in pipelines.DOMAINS.values()]
    assert all(_number(r["pipeline samples/s"]) > 0 and _number(r["model samples/s"]) > 0 for r in rows)
    # the like-for-like checks are printed with the tables
    if "monai" not in missing:
        assert "same windows: True" in section and "max |ours - MONAI| per window" in section
    parity = next(t for t in tables if t and "argmax agreement" in t[0])
    assert {r["variant"] for r in parity} == {"torch eager fp32", "int8 MatMul", "int8 MatMul+Conv"}


def test_replace_section_appends_then_replaces():
    first = run_all.replace_section(ACCURACY, "## Performance\n\nrun 1")
    assert first.startswith(ACCURACY) and "run 1" in first and first.count(run_all.START) == 1
    second = run_all.replace_section(first + "after\n", "## Performance\n\nrun 2")
    assert "run 1" not in second and "run 2" in second and second.endswith("after\n")
    assert second.startswith(ACCURACY) and second.count(run_all.END) == 1


def test_misses_names_rows_below_goal():
    table = perf.Table("t", ["pipeline", "data", "ratio", "goal", "met"], machine="m")
    table.add("dicom", "ct", "0.38", ">= 1", perf.meets(0.38, 1.0))
    table.add("png", "elpv", "4.10", ">= 3", perf.meets(4.1, 3.0))
    assert run_all.misses(table.markdown()) == ["dicom / ct: ratio 0.38, goal >= 1"]
    assert perf.meets(1.04, 1.03, higher_is_better=False) == "**no**"
    assert perf.meets(1.0, 1.03, higher_is_better=False) == "yes"


def test_rate_and_interleaving_count_the_work():
    calls = []
    rates = perf.interleaved({"a": lambda: (calls.append("a"), 2.0)[1], "b": lambda: (calls.append("b"), 1.0)[1]},
                             rounds=2, seconds=0.0, warmup=1, log=lambda _: None)
    assert calls == ["a", "b", "a", "b", "a", "b"]  # warm-up, then alternating rounds
    assert len(rates["a"]) == len(rates["b"]) == 2 and all(r > 0 for r in rates["a"] + rates["b"])


@pytest.mark.parametrize("script, tool", [("geotiff_vs_torchgeo", "torchgeo"), ("dicom_vs_monai", "monai")])
def test_comparison_without_the_bench_extra_says_skipped(script, tool, tmp_path):
    blocker = (
        "import importlib.abc, runpy, sys\n"
        "class B(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] == {tool!r}: raise ImportError(name)\n"
        "sys.meta_path.insert(0, B())\n"
        f"sys.argv = ['{script}.py', '--quick', '--markdown', {str(tmp_path / 'out.md')!r}]\n"
        f"runpy.run_path({str(BENCH / f'{script}.py')!r}, run_name='__main__')\n"
    )
    done = subprocess.run([sys.executable, "-c", blocker], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "pip install 'convnext-domains[bench]'" in done.stdout
    assert "- skipped:" in (tmp_path / "out.md").read_text()


def test_compared_tools_stay_out_of_the_package():
    for folder in ("core", "domains"):
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text()
            assert not re.search(r"^\s*(import|from)\s+(torchgeo|monai)\b", text, flags=re.M), path


@pytest.mark.parametrize("tile", [32, 64])
def test_pixel_baseline_reads_each_labelled_pixel_of_the_split_once(tmp_path, tile):
    """The Landsat protocol's per-pixel baseline: every labelled, valid pixel of the split's
    tiles exactly once, whatever the tile size inside the 64 px blocks (reading the whole block
    per tile counted a block's pixels once per tile), normalised as the network's inputs."""
    import agriculture
    import rasterio

    from domains.agriculture import SceneSegmentationDataModule
    from domains.agriculture.synthetic import write_demo_scene

    scene = write_demo_scene(tmp_path / "scene", width=160, height=128, sparse=0.3, patches_per_class=1)
    dm = SceneSegmentationDataModule(image=str(scene["scene"]), labels=str(scene["labels"]),
                                     class_values=[1, 2, 3], tile_size=tile, block_size=64, seed=0,
                                     num_workers=0)
    dm.setup("fit")
    with rasterio.open(scene["labels"]) as labels, rasterio.open(scene["scene"]) as image:
        codes, valid = labels.read(1), image.dataset_mask() > 0
    for split in ("train", "test"):
        blocks = {dm.source.blocks[int(j)] for j in dm.splits[split]}
        expected = 0
        for b in blocks:  # the split's blocks (test keeps only tiles with labels: all labels counted)
            w = dm.source.block_windows[b]
            rows = slice(int(w.row_off), int(w.row_off + w.height))
            cols = slice(int(w.col_off), int(w.col_off + w.width))
            expected += int((np.isin(codes[rows, cols], [1, 2, 3]) & valid[rows, cols]).sum())
        x, y = agriculture.split_pixels(dm, split)
        assert len(y) == x.shape[0] == expected and x.shape[1] == dm.in_chans
        assert set(np.unique(y)) <= {0, 1, 2}


def test_elpv_flag_rates_by_hand():
    # Levels 0..3 = expert defect probability 0, 1/3, 2/3, 1; level 2 has no poly cell.
    levels = np.array([0, 0, 0, 1, 2, 3, 3, 3])
    kinds = np.array(["mono", "poly", "poly", "mono", "mono", "mono", "poly", "poly"])
    flagged = np.array([True, False, True, False, True, True, False, True])
    rows = elpv_errors.flag_rates(levels, kinds, flagged)
    assert rows == [
        ("0 (functional)", "mono", 1, 1.0), ("0 (functional)", "poly", 2, 0.5), ("0 (functional)", "all", 3, 2 / 3),
        ("1/3 (possibly)", "mono", 1, 0.0), ("1/3 (possibly)", "all", 1, 0.0),
        ("2/3 (likely)", "mono", 1, 1.0), ("2/3 (likely)", "all", 1, 1.0),
        ("1 (defective)", "mono", 1, 1.0), ("1 (defective)", "poly", 2, 0.5), ("1 (defective)", "all", 3, 2 / 3),
    ]
