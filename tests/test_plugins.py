"""Domains are plug-ins: core imports no domain, a reader from another package plugs into export
and torch-free prediction without editing core, and the built-in reader names still resolve."""

from __future__ import annotations

import ast
import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from core import export
from core.bundle import load_bundle
from core.classification import ClassificationTask
from core.contracts import InputContract
from core.errors import DataError
from core.export_checkpoint import rebuild_task
from core.plugins import DomainPlugin, plugin_of
from core.readers import BUILTIN_READERS, READERS, InputReader
from core.torch_free import BLOCKED, run_without_torch
from tests.fake_plugin.plugin import LIMITATION
from tests.fake_plugin.reader import NPY

from .conftest import TINY

ROOT = Path(__file__).resolve().parents[1]


# ---- (a) core never imports a domain ------------------------------------------------------
def domain_imports(source: str) -> list[str]:
    """Every import of the ``domains`` package in ``source``: module level or inside functions,
    ``import``/``from`` statements and importlib calls with a literal name."""
    found = []
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                names = [node.args[0].value]
        found += [f"line {node.lineno}: {name}" for name in names if name.split(".")[0] == "domains"]
    return found


def test_the_scan_sees_every_kind_of_import():
    source = ("import domains.medical\nfrom domains.agriculture import bands\n"
              "def f():\n    from domains.medical.dicom import read_dicom\n"
              "    importlib.import_module('domains.x')\nimport domainsx\nfrom core import domains\n")
    assert [hit.split(": ")[1] for hit in domain_imports(source)] == [
        "domains.medical", "domains.agriculture", "domains.medical.dicom", "domains.x"]


def test_no_module_under_core_imports_domains():
    modules = sorted((ROOT / "core").rglob("*.py"))
    assert len(modules) > 30  # the scan looks at core itself
    offenders = {str(m.relative_to(ROOT)): hits for m in modules
                 if (hits := domain_imports(m.read_text()))}
    assert offenders == {}, f"core must find domains through plug-ins, not imports: {offenders}"


# ---- (b) a reader from another package: export and torch-free prediction -------------------
@pytest.fixture(scope="module")
def npy_bundle(tmp_path_factory) -> Path:
    """A bundle of a tiny two-channel classifier whose contract names the fake plug-in's reader."""
    tmp = tmp_path_factory.mktemp("npy")
    torch.manual_seed(0)
    task = ClassificationTask(**TINY, in_chans=2, num_classes=2, class_names=["flat", "bumpy"])
    ckpt = tmp / "npy.ckpt"
    torch.save({"task_class": "core.classification.ClassificationTask",
                "hyper_parameters": dict(task.hparams), "state_dict": task.state_dict(),
                "preprocessing": {"reader": NPY.name, "in_chans": 2, "image_size": 32,
                                  "mean": [0.5, 0.5], "std": [0.25, 0.25]}}, ckpt)
    return export.export_bundle(ckpt, tmp / "bundle")


def npy_inputs(folder: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"a{i}.npy" for i in range(3)]
    for p in paths:
        np.save(p, rng.random((40, 36, 2), dtype=np.float32))
    (folder / "notes.txt").write_text("not an input: the reader's extensions leave it out")
    return paths


def test_plugin_reader_travels_with_its_bundle(npy_bundle):
    meta = load_bundle(npy_bundle).meta
    assert meta["input"]["reader"] == NPY.name and meta["input"]["shape"] == [None, 2, 32, 32]
    assert {"tests", "tests.fake_plugin", "tests.fake_plugin.reader"} <= set(meta["predictor"]["modules"])
    assert "predictor/tests/fake_plugin/reader.py" in meta["files"]  # sealed like the model
    assert not any(m.startswith("domains") for m in meta["predictor"]["modules"])
    assert {r.split(">=")[0] for r in meta["predictor"]["requirements"]} == {"onnxruntime", "numpy", "pillow"}
    card = (npy_bundle / "README.md").read_text()
    assert LIMITATION in card  # the plug-in's model-card section
    assert "array values used as saved" in card and "- `predictions.csv`: one row" in card


def test_plugin_bundle_predicts_without_torch(npy_bundle, tmp_path):
    inputs = npy_inputs(tmp_path / "in")
    result = run_without_torch(["predict", "--bundle", str(npy_bundle), str(tmp_path / "in"),
                                "--out", str(tmp_path / "project")], cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    project = list(csv.DictReader((tmp_path / "project" / "predictions.csv").open()))
    assert [r["id"] for r in project] == [str(p) for p in inputs]
    # The bundle alone, outside this checkout: the reader comes from the bundle's predictor/.
    alone = Path(shutil.copytree(npy_bundle, tmp_path / "received" / "bundle"))
    child = ("import importlib.abc, runpy, sys\n"
             "class Block(importlib.abc.MetaPathFinder):\n"
             "    def find_spec(self, name, path=None, target=None):\n"
             f"        if name.split('.')[0] in {set(BLOCKED)!r}:\n"
             "            raise ImportError(name + ' is blocked')\n"
             "sys.meta_path.insert(0, Block())\n"
             "sys.argv = sys.argv[1:]\n"
             "runpy.run_path(sys.argv[0], run_name='__main__')\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    ran = subprocess.run([sys.executable, "-c", child, str(alone / "predict.py"), *map(str, inputs),
                          "--out", str(tmp_path / "alone")], cwd=tmp_path, env=env,
                         capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr[-3000:]
    rows = list(csv.DictReader((tmp_path / "alone" / "predictions.csv").open()))
    assert len(rows) == len(project) == 3
    for a, b in zip(rows, project, strict=True):
        assert float(a["prob_bumpy"]) == pytest.approx(float(b["prob_bumpy"]), abs=1e-6)


def test_plugin_reader_errors_name_the_file(npy_bundle, tmp_path):
    bad = tmp_path / "gray.npy"
    np.save(bad, np.zeros((8, 8), np.float32))
    result = run_without_torch(["predict", "--bundle", str(npy_bundle), str(bad),
                                "--out", str(tmp_path / "o")], cwd=ROOT)
    assert result.returncode == 2
    assert f"'{bad}' holds an array of shape (8, 8); save an HWC array with 2 channels" in result.stderr


# ---- (c) the built-in names, and what a plug-in path must be -------------------------------
@pytest.mark.parametrize("name", sorted(BUILTIN_READERS))
def test_builtin_reader_names_resolve_to_their_domain_readers(name):
    reader = READERS[name]
    assert isinstance(reader, InputReader) and reader.name == name
    path = BUILTIN_READERS[name]
    assert READERS[path] is reader  # the short name is an alias of the dotted path
    plugin = plugin_of(path)
    if path.startswith("core."):
        assert plugin is None
    else:  # declared in its domain's one place, with the extra that installs its packages
        assert reader in plugin.readers and reader.extra == plugin.extra and reader.packages


def test_schema_1_bundles_keep_their_reader_names():
    # Bundles written before plug-ins store these names; their readers behave as before.
    assert list(READERS) == ["image", "dicom", "geotiff_patch", "geotiff_scene"]
    assert READERS["geotiff_scene"].tiled and not READERS["geotiff_patch"].tiled
    assert "" in READERS["dicom"].extensions and ".png" in READERS["image"].extensions
    # Each declares its typed contract; the fake plug-in's reader makes do with the base one.
    assert {name: READERS[name].contract_class.__name__ for name in READERS} == {
        "image": "ImageContract", "dicom": "DicomContract", "geotiff_patch": "GeoTiffPatchContract",
        "geotiff_scene": "GeoTiffSceneContract"}
    assert NPY.contract_class is InputContract


@pytest.mark.parametrize(("name", "message"), [
    ("hyperspectral", r"reader 'hyperspectral' is not supported.*image, dicom.*package\.module:OBJECT"),
    ("tests.fake_plugin.nowhere:NPY", r"needs module tests\.fake_plugin\.nowhere"),
    ("tests.fake_plugin.reader:NOPE", r"module tests\.fake_plugin\.reader has no NOPE"),
    ("tests.fake_plugin.plugin:PLUGIN", r"is a DomainPlugin, expected an instance of core\.readers\.InputReader"),
])
def test_bad_reader_names_are_clear_errors(name, message):
    with pytest.raises(DataError, match=message):
        READERS[name]
    assert name not in READERS


def test_a_copied_reader_that_kept_its_name_is_refused(monkeypatch):
    import tests.fake_plugin.reader as module

    class Copied(module.NpyReader):
        name = "dicom"  # copied from the medical domain and not renamed

    monkeypatch.setattr(module, "COPIED", Copied(), raising=False)
    with pytest.raises(DataError, match=r"names itself 'dicom'.*set Copied.name = 'tests.fake_plugin.reader:COPIED'"):
        READERS["tests.fake_plugin.reader:COPIED"]


def test_plugin_of_finds_the_nearest_domain_plugin():
    assert plugin_of("domains.medical.tasks.MedicalClassificationTask").name == "medical"
    assert plugin_of("domains.agriculture.plugin:GEOTIFF_SCENE").extra == "agriculture"
    assert plugin_of("tests.fake_plugin.reader:NPY").card_limitations == (LIMITATION,)
    assert plugin_of("core.classification.ClassificationTask") is None


def test_a_missing_task_module_names_its_domains_extra():
    checkpoint = {"task_class": "domains.medical.not_installed.Task", "hyper_parameters": {},
                  "state_dict": {}}
    with pytest.raises(DataError, match=r"pip install 'convnext-domains\[medical\]'"):
        rebuild_task(checkpoint, "run.ckpt")


def test_a_reader_needing_another_extra_than_its_domain_is_refused():
    class Needy(type(NPY)):
        name = "tests.fake_plugin.reader:NPY"
        extra = "agriculture"

    with pytest.raises(ValueError, match="needs extra medical, but its reader .* names extra agriculture"):
        DomainPlugin(name="x", extra="medical", readers=(Needy(),))


def test_metadata_names_the_reader_it_was_exported_with(npy_bundle):
    meta = json.loads((npy_bundle / "metadata.json").read_text())
    assert READERS[meta["input"]["reader"]] is NPY
