"""Export bundles: checkpoints of real (tiny) CLI runs -> model.onnx + metadata.json + README.md.

Three runs are trained once per module through the real CLI (manufacturing folder classifier,
agriculture scene segmentation with UPerNet, DICOM classifier) and exported once; the tests
check the bundle contents against the checkpoints, ONNX Runtime against Lightning, the failure
modes (existing folders, interrupted and killed exports, parity failures, tampering) and that
each bundle predicts on its own in a fresh venv without torch or this checkout.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from core import export
from core.bundle import SCHEMA_VERSION, Bundle, BundleError, load_bundle
from core.bundle_verify import verify_bundle
from core.classification import ClassificationTask
from core.cli import run_cli
from core.errors import DataError
from domains.agriculture.synthetic import write_demo_scene

from .conftest import TINY, TINY_ARGS, make_defect_folders
from .dicom_helpers import make_ct_study

ROOT = Path(__file__).resolve().parents[1]
DOMAINS = ("manufacturing", "agriculture", "medical")


@dataclass
class Trained:
    """A finished tiny run: its best checkpoint, the trained model and its datamodule."""

    ckpt: Path
    model: Any
    datamodule: Any
    inputs: list[Path]
    """Files or folders to predict on with the bundle."""


def _train(tmp: Path, config: str, data_args: list[str], inputs: list[Path]) -> Trained:
    args = [
        "--config", str(ROOT / "configs" / config),
        *TINY_ARGS,
        "--data.init_args.image_size=32", "--data.init_args.batch_size=4",
        "--data.init_args.num_workers=0", "--trainer.max_epochs=1",
        # Absolute paths: the module-scoped fixture cannot chdir.
        f"--trainer.logger.init_args.save_dir={tmp / 'runs'}",
        f"--trainer.default_root_dir={tmp / 'runs'}", *data_args,
    ]
    cli = run_cli(args, run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    # As `make demo` does: test in the same run, so metrics.json lands next to checkpoints/.
    cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path="best")
    return Trained(Path(cli.trainer.checkpoint_callback.best_model_path), cli.model, cli.datamodule,
                   inputs)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Trained]:
    torch.set_num_threads(2)
    tmp = tmp_path_factory.mktemp("runs")
    defects = make_defect_folders(tmp / "defects", per_class=8)
    scene = write_demo_scene(tmp / "agri", 96, 96, sparse=0.2, patches_per_class=1)
    study = make_ct_study(tmp / "study", n_patients=8, per_patient=2)
    return {
        "manufacturing": _train(tmp / "m", "manufacturing/folder.yaml",
                                [f"--data.init_args.root={defects}"], [defects]),
        "agriculture": _train(tmp / "a", "agriculture/segmentation.yaml", [
            f"--data.init_args.image={scene['scene']}", f"--data.init_args.labels={scene['labels']}",
            "--data.init_args.tile_size=32", "--data.init_args.block_size=32",
            "--data.init_args.samples_per_epoch=8", "--model.init_args.decoder_channels=16",
            # Coarse-imagery upsampling is part of the graph: parity and bundles must keep it.
            "--model.init_args.input_scale=2"],
            [scene["scene"]]),
        "medical": _train(tmp / "d", "medical/classification.yaml", [
            f"--data.init_args.manifest={study['labels']}", "--data.init_args.val_fraction=0.25",
            "--data.init_args.test_fraction=0.25"], [study["slices"]]),
    }


@pytest.fixture(scope="module")
def bundles(trained, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("bundles")
    return {name: export.export_bundle(t.ckpt, out / name) for name, t in trained.items()}


def _ckpt(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if ".partial-" in p.name or ".old-" in p.name]


# ---- contents -----------------------------------------------------------------------------
EXPECTED = {
    "manufacturing": ("classification", "image", ["good", "scratch"], [None, 1, 32, 32]),
    "agriculture": ("segmentation", "geotiff_scene", ["water", "crop", "bare_soil"], [None, 6, 32, 32]),
    "medical": ("classification", "dicom", ["contrast", "plain"], [None, 3, 32, 32]),
}


BASE = {"onnxruntime", "numpy", "pillow"}
PREDICTOR_PACKAGES = {
    "manufacturing": BASE,
    "agriculture": BASE | {"rasterio"},
    "medical": BASE | {"pydicom", "python-gdcm", "pylibjpeg", "pylibjpeg-openjpeg", "pylibjpeg-rle"},
}
PREDICTOR_DOMAIN_MODULES = {
    "manufacturing": set(),  # an image bundle carries no domain code and needs no extra
    "agriculture": {"domains.agriculture", "domains.agriculture.bands", "domains.agriculture.scene",
                    "domains.agriculture.contract"},
    "medical": {"domains.medical", "domains.medical.dicom", "domains.medical.contract"},
}


@pytest.mark.parametrize("name", DOMAINS)
def test_bundle_metadata_matches_checkpoint(name, trained, bundles):
    path, ckpt = bundles[name], _ckpt(trained[name].ckpt)
    assert {"model.onnx", "metadata.json", "metadata.schema.json", "README.md", "predict.py",
            "requirements.txt", "predictor"} == {p.name for p in path.iterdir()}
    meta = load_bundle(path).meta  # verifies the schema version, the digest and every sha256
    kind, reader, classes, shape = EXPECTED[name]
    assert meta["schema_version"] == SCHEMA_VERSION
    assert (meta["domain"], meta["task"], meta["class_names"]) == (name, kind, classes)
    assert meta["task_class"] == ckpt["task_class"]
    assert meta["input"]["reader"] == reader and meta["input"]["shape"] == shape
    assert meta["input"]["mean"] == ckpt["preprocessing"]["mean"]
    assert (meta["input"]["dtype"], meta["input"]["layout"]) == ("float32", "NCHW")
    # The contract is written once, by the datamodule into the checkpoint, and travels unchanged.
    assert ckpt["preprocessing_schema"] == SCHEMA_VERSION and meta["input"] == ckpt["preprocessing"]
    assert verify_bundle(path).json_schema
    assert meta["output"] == {"name": "logits", "activation": "softmax",
                              "shape": "N,K,H,W" if kind == "segmentation" else "N,K"}
    assert meta["training_data"] == ckpt["data_fingerprint"]
    assert meta["training_data"]["split_sizes"]["train"] > 0
    run_metrics = json.loads((trained[name].ckpt.parents[1] / "metrics.json").read_text())
    assert meta["metrics"]["metrics"].keys() == run_metrics["metrics"].keys()
    assert set(meta["versions"]) == {"convnext-domains", "torch", "lightning", "timm", "onnx",
                                     "onnxruntime", "numpy", "python"}
    assert meta["backbone"]["pretrained"] == "none"
    assert meta["backbone"]["depths"] == TINY["depths"] and meta["backbone"]["dims"] == TINY["dims"]
    assert meta["parity"]["max_abs_diff"] < 1e-4 and meta["parity"]["samples"] == 4
    # The predictor's files are sealed like the model, one per module the metadata lists.
    predictor = {n for n in meta["files"] if n.startswith("predictor/")}
    assert set(meta["files"]) == {"model.onnx", "metadata.schema.json", "README.md", "predict.py",
                                  "requirements.txt", *predictor}
    modules = {n.removeprefix("predictor/").removesuffix(".py").removesuffix("/__init__").replace("/", ".")
               for n in predictor}
    assert modules == set(meta["predictor"]["modules"])
    domain_modules = {m for m in modules if m.startswith("domains.")}
    assert PREDICTOR_DOMAIN_MODULES[name] <= domain_modules
    assert all(m.startswith(f"domains.{name}") for m in domain_modules)  # no other domain's code
    assert {"core.predict_bundle", "core.preprocess", "core.bundle", "core.errors"} <= modules
    lines = (path / "requirements.txt").read_text().splitlines()
    assert [r for r in lines if r and not r.startswith("#")] == meta["predictor"]["requirements"]
    assert {r.split(">=")[0] for r in meta["predictor"]["requirements"]} == PREDICTOR_PACKAGES[name]
    assert all(">=" in r for r in meta["predictor"]["requirements"])  # every package has a floor
    assert not any(p.name.startswith(".") for p in path.rglob("*"))  # no owner file, no caches
    card = (path / "README.md").read_text()
    assert "convnext-domains predict --bundle DIR" in card and classes[0] in card
    assert "pip install -r DIR/requirements.txt" in card and "python DIR/predict.py" in card
    if kind == "segmentation":
        assert meta["decision"] is None
    else:
        decision = meta["decision"]
        assert decision["threshold"] == pytest.approx(float(ckpt["state_dict"]["threshold"]))
        assert decision["positive_index"] == [1] and decision["positive_classes"] == [classes[1]]
        assert f"{decision['threshold']:.4g}" in card and "--threshold T" in card
    if name == "medical":
        assert "Not a medical device" in card and "pydicom>=" in card
        assert meta["decision"]["metric_names"]["recall"] == "op_sensitivity"


@pytest.mark.parametrize("name", DOMAINS)
def test_onnx_matches_lightning_on_a_real_sample(name, trained, bundles):
    batch = next(iter(trained[name].datamodule.test_dataloader()))
    images = batch["image"]
    expected = export.lightning_probabilities(trained[name].model.eval(), images)
    got = load_bundle(bundles[name]).probabilities(images.numpy())
    assert got.shape == expected.shape and got.shape[0] == images.shape[0]
    assert np.abs(got - expected).max() < 1e-4


def test_uper_pyramid_pooling_replacement_is_exact():
    x = torch.randn(2, 3, 7, 5)
    for size_out in [(1, 1), (2, 3), (3, 2), (6, 6)]:
        fixed = export.FixedAdaptiveAvgPool2d(x.shape[-2:], size_out)
        torch.testing.assert_close(fixed(x), F.adaptive_avg_pool2d(x, size_out))
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.AdaptiveAvgPool2d(3))
    with export.exportable_pools(model, x) as swapped:
        assert swapped == 1 and isinstance(model[1], export.FixedAdaptiveAvgPool2d)
    assert isinstance(model[1], nn.AdaptiveAvgPool2d)  # restored


def test_core_multilabel_checkpoint_and_local_weights_name(tmp_path):
    task = ClassificationTask(**TINY, in_chans=3, num_classes=3, class_names=["a", "b", "c"],
                              multilabel=True)
    hparams = {**dict(task.hparams), "pretrained": "/home/alice/weights/convnext_atto.safetensors"}
    ckpt = tmp_path / "ml.ckpt"
    torch.save({"task_class": "core.classification.ClassificationTask", "hyper_parameters": hparams,
                "state_dict": task.state_dict(),
                "preprocessing": {"reader": "image", "in_chans": 3, "image_size": [32, 48],
                                  "mean": [0.5] * 3, "std": [0.25] * 3}}, ckpt)
    meta = load_bundle(export.export_bundle(ckpt, tmp_path / "b")).meta
    assert (meta["domain"], meta["task"], meta["output"]["activation"]) == ("core", "multilabel", "sigmoid")
    assert meta["input"]["shape"] == [None, 3, 32, 48]
    assert meta["decision"] is None and meta["metrics"] is None and meta["training_data"] is None
    # The weights' origin is a file name only: a full path would leak a user name.
    assert meta["backbone"]["pretrained"] == "convnext_atto.safetensors"
    assert meta["backbone"]["weight_licence"].startswith("unknown")
    hub = export.backbone_info(task, pretrained=True)
    assert hub["pretrained"] == "timm hub" and hub["weight_licence"]  # from timm's pretrained cfg
    assert export.backbone_info(task, pretrained=False)["pretrained"] == "none"
    for name in ("metadata.json", "README.md"):
        assert "alice" not in (tmp_path / "b" / name).read_text()
    assert meta["parity"]["max_abs_diff"] < 1e-4


# ---- files and folders --------------------------------------------------------------------
def test_include_checkpoint_and_nothing_written_elsewhere(trained, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the prediction writers would write predictions.csv here
    source = trained["manufacturing"].ckpt
    path = export.export_bundle(source, "bundle", include_checkpoint=True)
    assert path == tmp_path / "bundle"
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]
    meta = load_bundle(path).meta
    assert "model.ckpt" in meta["files"]
    assert (path / "model.ckpt").read_bytes() == source.read_bytes()
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's private 0700


def test_existing_folder_needs_overwrite(trained, tmp_path):
    ckpt, out = trained["manufacturing"].ckpt, tmp_path / "bundle"
    export.export_bundle(ckpt, out)
    before = (out / "metadata.json").read_text()
    with pytest.raises(DataError, match="already exists.*--overwrite"):
        export.export_bundle(ckpt, out)
    assert (out / "metadata.json").read_text() == before
    export.export_bundle(ckpt, out, include_checkpoint=True, overwrite=True)
    assert "model.ckpt" in load_bundle(out).meta["files"]
    assert _leftovers(tmp_path) == [] and [p.name for p in tmp_path.iterdir()] == ["bundle"]


def test_overwrite_refuses_a_folder_that_is_not_a_bundle(trained, tmp_path):
    out = tmp_path / "documents"
    (out / "notes.txt").parent.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="not an export bundle"):
        export.export_bundle(trained["manufacturing"].ckpt, out, overwrite=True)
    assert (out / "notes.txt").read_text() == "keep me" and _leftovers(tmp_path) == []


def _boom(*args, **kwargs):
    raise KeyboardInterrupt("simulated interruption")


@pytest.mark.parametrize("where", ["onnx", "parity", "sealed"])
def test_interrupted_export_leaves_nothing(where, trained, tmp_path, monkeypatch):
    target = {"onnx": (torch.onnx, "export"), "parity": (export, "lightning_probabilities"),
              "sealed": (export, "verify_bundle")}[where]  # runs after metadata.json is written
    monkeypatch.setattr(*target, _boom)
    with pytest.raises(KeyboardInterrupt):
        export.export_bundle(trained["manufacturing"].ckpt, tmp_path / "bundle")
    assert list(tmp_path.iterdir()) == []


def test_failed_rename_keeps_the_old_bundle(trained, tmp_path, monkeypatch):
    ckpt, out = trained["manufacturing"].ckpt, tmp_path / "bundle"
    export.export_bundle(ckpt, out)
    before = (out / "metadata.json").read_text()
    real_replace, calls = os.replace, []

    def flaky_replace(src, dst):
        calls.append(Path(src).name)
        if ".partial-" in Path(src).name:  # the new bundle cannot be moved in
            raise OSError("simulated rename failure")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", flaky_replace)
    with pytest.raises(OSError, match="simulated"):
        export.export_bundle(ckpt, out, include_checkpoint=True, overwrite=True)
    assert len(calls) == 3  # old aside, new in (fails), old back
    assert (out / "metadata.json").read_text() == before
    load_bundle(out)
    assert _leftovers(tmp_path) == []


def test_parity_failure_writes_no_bundle(trained, tmp_path, monkeypatch):
    ckpt = trained["manufacturing"].ckpt
    with pytest.raises(DataError, match="parity check failed"):
        export.export_bundle(ckpt, tmp_path / "a", tolerance=-1.0)
    real = Bundle.probabilities
    monkeypatch.setattr(Bundle, "probabilities", lambda self, batch: real(self, batch) + 1e-3)
    with pytest.raises(DataError, match=r"differ by up to 0\.001"):
        export.export_bundle(ckpt, tmp_path / "b")
    assert list(tmp_path.iterdir()) == []


# ---- tampering ----------------------------------------------------------------------------
def _copy(bundles: dict[str, Path], tmp_path: Path) -> Path:
    return Path(shutil.copytree(bundles["manufacturing"], tmp_path / "copy"))


def test_changed_model_file_is_refused(bundles, tmp_path):
    path = _copy(bundles, tmp_path)
    data = bytearray((path / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (path / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="model.onnx"):
        load_bundle(path)


def test_edited_threshold_is_refused(bundles, tmp_path):
    path = _copy(bundles, tmp_path)
    meta = json.loads((path / "metadata.json").read_text())
    meta["decision"]["threshold"] = 0.01
    (path / "metadata.json").write_text(json.dumps(meta, indent=2))
    with pytest.raises(BundleError, match="modified after export"):
        load_bundle(path)


def test_other_schema_major_is_refused(bundles, tmp_path):
    path = _copy(bundles, tmp_path)
    meta = json.loads((path / "metadata.json").read_text())
    meta["schema_version"] = f"{int(SCHEMA_VERSION.split('.')[0]) + 1}.0"
    (path / "metadata.json").write_text(json.dumps(meta, indent=2))
    with pytest.raises(BundleError, match="schema version"):
        load_bundle(path)


# ---- checkpoints and command line ---------------------------------------------------------
@pytest.mark.parametrize("key", ["task_class", "preprocessing"])
def test_foreign_checkpoint_is_refused(key, trained, tmp_path):
    checkpoint = _ckpt(trained["manufacturing"].ckpt)
    del checkpoint[key]
    path = tmp_path / "foreign.ckpt"
    torch.save(checkpoint, path)
    with pytest.raises(DataError, match="not written by a convnext-domains task run") as info:
        export.export_bundle(path, tmp_path / "bundle")
    assert str(path) in str(info.value) and key in str(info.value)
    assert [p.name for p in tmp_path.iterdir()] == ["foreign.ckpt"]


def test_cli_main(trained, tmp_path, capsys):
    ckpt, out = str(trained["manufacturing"].ckpt), str(tmp_path / "bundle")
    assert export.main(["--ckpt", ckpt, "--out", out]) == 0
    printed = capsys.readouterr().out
    assert f"bundle: {out}" in printed and "parity: max" in printed and "model.onnx" in printed
    with pytest.raises(SystemExit) as info:
        export.main(["--ckpt", ckpt, "--out", out])
    assert info.value.code == 1 and "already exists" in capsys.readouterr().err


# ---- killed exports -----------------------------------------------------------------------
def _partial(parent: Path, name: str, owner: dict | None = None, files: tuple[str, ...] = ("model.onnx",),
             age_hours: float = 0.0) -> Path:
    """A temporary export folder as an export killed at some point would leave it."""
    folder = parent / name
    folder.mkdir()
    for file in files:
        (folder / file).write_bytes(b"\0" * 1000)
    if owner is not None:
        (folder / export.OWNER).write_text(json.dumps({"tool": export.OWNER_TOOL, **owner}))
    when = time.time() - age_hours * 3600
    for p in [*folder.iterdir(), folder]:
        os.utime(p, (when, when))
    return folder


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_next_export_removes_only_abandoned_partials(trained, tmp_path):
    host, old = socket.gethostname(), export.STALE_AFTER_S / 3600 + 1
    killed = _partial(tmp_path, ".bundle.partial-killed01", {"pid": _dead_pid(), "host": host})
    legacy = _partial(tmp_path, ".other.partial-legacy01", None, ("model.onnx", "README.md"), old)
    keep = [
        # A concurrent export (this very process is alive), and one on another machine.
        _partial(tmp_path, ".bundle.partial-running1", {"pid": os.getpid(), "host": host}),
        _partial(tmp_path, ".bundle.partial-remote01", {"pid": _dead_pid(), "host": f"not-{host}"}),
        # Old, but holding a file no export writes: not provably ours.
        _partial(tmp_path, ".bundle.partial-foreign1", None, ("notes.txt",), old),
        # Ours by name and content, but recent: maybe an older version exporting right now.
        _partial(tmp_path, ".bundle.partial-recent01", None, ("model.onnx",), 1.0),
    ]
    export.export_bundle(trained["manufacturing"].ckpt, tmp_path / "bundle")
    assert not killed.exists() and not legacy.exists()
    assert all(folder.is_dir() for folder in keep)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["bundle", *(f.name for f in keep)])


def test_stale_partial_cleanup_names_what_it_removed(tmp_path, caplog):
    folder = _partial(tmp_path, ".b.partial-abc_123", {"pid": _dead_pid(), "host": socket.gethostname()})
    # Not our naming scheme: never touched, whatever it holds.
    other = _partial(tmp_path, "b.partial-abc", {"pid": _dead_pid(), "host": socket.gethostname()})
    with caplog.at_level("WARNING", logger="core.export"):
        assert export.clean_stale_partials(tmp_path) == [folder]
    assert other.is_dir()
    assert str(folder) in caplog.text and "no longer running" in caplog.text


def _sigterm_during(monkeypatch, function: str) -> None:
    """Send this process SIGTERM from inside ``export.<function>`` (a deterministic 'kill')."""
    real = getattr(export, function)

    def signalled(*args, **kwargs):
        result = real(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)
        return result

    monkeypatch.setattr(export, function, signalled)


@pytest.fixture
def sigterm_sentinel():
    """Without the export's own handler, SIGTERM raises this instead of killing pytest."""

    class Unhandled(Exception):
        pass

    def handler(signum, frame):
        raise Unhandled("SIGTERM reached the previous handler")

    previous = signal.signal(signal.SIGTERM, handler)
    yield handler, Unhandled
    signal.signal(signal.SIGTERM, previous)


@pytest.mark.parametrize("function", ["write_onnx", "write_predictor"])
def test_sigterm_removes_the_partial_folder(function, trained, tmp_path, monkeypatch, sigterm_sentinel):
    handler, _ = sigterm_sentinel
    _sigterm_during(monkeypatch, function)
    with pytest.raises(export.ExportInterrupted) as info:
        export.export_bundle(trained["manufacturing"].ckpt, tmp_path / "bundle")
    assert info.value.published is None
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) is handler  # the caller's handler is back


def test_sigterm_cli_message_and_exit_code(trained, tmp_path, monkeypatch, capsys, sigterm_sentinel):
    _sigterm_during(monkeypatch, "write_onnx")
    out = tmp_path / "bundle"
    with pytest.raises(SystemExit) as info:
        export.main(["--ckpt", str(trained["manufacturing"].ckpt), "--out", str(out)])
    assert info.value.code == 128 + signal.SIGTERM
    err = capsys.readouterr().err
    assert err.startswith("error: export interrupted by SIGTERM") and str(out) in err
    assert list(tmp_path.iterdir()) == []


def test_sigterm_during_the_final_rename_waits_for_it(trained, tmp_path, monkeypatch, sigterm_sentinel):
    ckpt, out = trained["manufacturing"].ckpt, tmp_path / "bundle"
    export.export_bundle(ckpt, out)
    _sigterm_during(monkeypatch, "_publish")  # arrives while the finished bundle is moved in
    with pytest.raises(export.ExportInterrupted) as info:
        export.export_bundle(ckpt, out, include_checkpoint=True, overwrite=True)
    assert info.value.published == out
    assert "model.ckpt" in load_bundle(out).meta["files"]  # the new bundle, complete
    assert _leftovers(tmp_path) == []


# ---- the bundle on its own ----------------------------------------------------------------
@pytest.mark.parametrize("reader", ["image", "dicom", "geotiff_patch", "geotiff_scene"])
def test_predictor_carries_every_module_its_reader_imports(reader):
    """Imports inside functions (a reader's imports of its domain's modules) are followed into
    core and the reader's own domain; only other domains' modules stay out of the bundle."""
    import ast

    from core.readers import READERS, reader_modules

    carried = set(export.predictor_modules(reader))
    own = export.reader_packages(reader)
    for module in carried:
        source = export._module_source(module)
        for lazy in export._imports(module, ast.parse(source.read_text()), module_level=False):
            mine = lazy.startswith("core") or any(lazy.startswith(p) for p in own)
            assert lazy in carried or not mine, f"{module} imports {lazy}, missing from the bundle"
    assert all(not m.startswith("domains") or m == "domains" or m.startswith(own) for m in carried)
    if reader == "image":
        assert carried == {"core", "core.atomic", "core.bundle", "core.contracts", "core.errors",
                           "core.coco_rle", "core.image_reader", "core.json_schema", "core.predict_bundle",
                           "core.predict_detection", "core.preprocess", "core.readers"}
    else:  # what the reader imports lazily from its domain comes along although not declared
        declared = reader_modules(READERS[reader])
        assert set(declared) <= carried
        assert set().union(*(export._imports(m, ast.parse(export._module_source(m).read_text()),
                                             module_level=False) for m in declared)) \
            & {m for m in carried if m.startswith(own) and m not in declared}


def test_requirement_floors_come_from_the_declared_requirements(monkeypatch):
    declared = ["numpy >= 9.9", "Pillow>=10", 'onnxruntime>=1.18; extra == "export"',
                'rasterio>=1.3; extra == "agriculture"']
    monkeypatch.setattr(export.importlib.metadata, "requires", lambda name: declared)
    assert export.predictor_requirements("geotiff_scene") == [
        "onnxruntime>=1.18", "numpy>=9.9", "Pillow>=10", "rasterio>=1.3"]
    with pytest.raises(DataError, match="no installed requirement declares pydicom.*pyproject.toml"):
        export.predictor_requirements("dicom")


def test_a_plugin_readers_floors_come_from_its_own_distribution(tmp_path, monkeypatch):
    # A reader shipped by another distribution declares its packages there, not in our
    # pyproject.toml (export used to refuse every package convnext-domains does not declare).
    from core.export_predictor import reader_distribution
    from tests.fake_plugin.reader import NpyReader

    reader = "tests.fake_plugin.reader:NPY"
    monkeypatch.setattr(NpyReader, "packages", ("h5py",))
    with pytest.raises(DataError, match="no installed requirement declares h5py.*pyproject.toml"):
        export.predictor_requirements(reader)
    info = tmp_path / "acme_npy_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-npy-plugin\nVersion: 0.1\n"
                                   "Requires-Dist: h5py >=3.8\nRequires-Dist: numpy>=1.20\n")
    (info / "top_level.txt").write_text("tests\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert reader_distribution(reader) == "acme-npy-plugin"
    lines = export.predictor_requirements(reader)
    assert "h5py>=3.8" in lines
    # Our own floor wins for a package both declare.
    ours = [line for line in export.predictor_requirements("image") if line.lower().startswith("numpy")]
    assert [line for line in lines if line.lower().startswith("numpy")] == ours


def test_unknown_reader_kind_is_a_clear_error():
    with pytest.raises(DataError, match="reader 'hyperspectral' is not supported.*image"):
        export.predictor_modules("hyperspectral")


def _clean_env() -> dict[str, str]:
    """The environment without anything pointing into this checkout or its venv."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if not Path(p).resolve().is_relative_to(ROOT))
    return {**env, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def _run(args: list, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=_clean_env(), capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, f"{args}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="session")
def fresh_venv(tmp_path_factory) -> Path:
    """A plain venv outside the checkout, made once per session: no system site-packages, so
    no torch, and no convnext-domains. Returns its bin folder."""
    root = tmp_path_factory.mktemp("fresh")
    started = time.perf_counter()
    _run([sys.executable, "-m", "venv", root / "venv"], cwd=root)
    bin_dir = root / "venv" / ("Scripts" if os.name == "nt" else "bin")
    probe = _run([bin_dir / "python", "-c", "import importlib.util as u; print([m for m in "
                  "('torch', 'lightning', 'core', 'domains', 'onnxruntime') if u.find_spec(m)])"], cwd=root)
    assert probe.stdout.strip() == "[]"
    print(f"fresh venv created in {time.perf_counter() - started:.1f} s")
    return bin_dir


def _handed_over(bundle: Path, tmp_path: Path) -> Path:
    """The bundle folder alone, copied where a receiving team would put it."""
    copy = Path(shutil.copytree(bundle, tmp_path / "received" / bundle.name))
    assert not copy.resolve().is_relative_to(ROOT)
    return copy


def _prediction_rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.open()))


@pytest.mark.parametrize("name", DOMAINS)
def test_bundle_predicts_alone_in_a_fresh_venv(name, trained, bundles, fresh_venv, tmp_path):
    from core.entry import main as convnext_domains

    bundle = _handed_over(bundles[name], tmp_path)
    started = time.perf_counter()
    _run([fresh_venv / "pip", "install", "-q", "-r", bundle / "requirements.txt"], cwd=tmp_path)
    print(f"pip install -r requirements.txt ({name}): {time.perf_counter() - started:.1f} s")
    _run([fresh_venv / "python", bundle / "predict.py", *trained[name].inputs, "--out", tmp_path / "alone"],
         cwd=tmp_path)
    assert not list(bundle.rglob("__pycache__"))  # the sealed folder stays as it was
    # The same bundle through the project's own command.
    convnext_domains(["predict", "--bundle", str(bundles[name]), *map(str, trained[name].inputs),
                      "--out", str(tmp_path / "project")])
    if name == "agriculture":
        import rasterio

        stem = Path(trained[name].inputs[0]).stem
        with rasterio.open(tmp_path / "alone" / f"{stem}_classes.tif") as a, \
                rasterio.open(tmp_path / "project" / f"{stem}_classes.tif") as b:
            assert (a.crs, a.transform) == (b.crs, b.transform)
            np.testing.assert_array_equal(a.read(), b.read())
    else:
        alone = _prediction_rows(tmp_path / "alone" / "predictions.csv")
        project = _prediction_rows(tmp_path / "project" / "predictions.csv")
        assert len(alone) == len(project) > 0
        for a, b in zip(alone, project, strict=True):
            assert a.keys() == b.keys()
            # A score within the probability tolerance of the threshold (the threshold is one
            # validation score, and these inputs may include it) may fall on either side when the
            # venv's onnxruntime/numpy/pillow differ from the project's.
            at_threshold = "score" in a and abs(float(a["score"]) - float(a["threshold"])) <= 1e-6
            for key in a:
                if key.startswith("prob_") or key == "score":
                    assert float(a[key]) == pytest.approx(float(b[key]), abs=1e-6)
                elif not (key == "decision" and at_threshold):
                    assert a[key] == b[key]


def test_tampered_predictor_is_refused_by_both_commands(bundles, fresh_venv, tmp_path):
    from core.entry import main as convnext_domains

    bundle = _handed_over(bundles["manufacturing"], tmp_path)
    _run([fresh_venv / "pip", "install", "-q", "-r", bundle / "requirements.txt"], cwd=tmp_path)
    with (bundle / "predictor" / "core" / "preprocess.py").open("a") as f:
        f.write("\nIMAGE_EXTENSIONS = ()\n")
    alone = subprocess.run([str(fresh_venv / "python"), str(bundle / "predict.py"), str(tmp_path),
                            "--out", str(tmp_path / "o")], cwd=tmp_path, env=_clean_env(),
                           capture_output=True, text=True)
    assert alone.returncode == 2
    assert "preprocess.py does not match the sha256" in alone.stderr
    with pytest.raises(SystemExit):
        convnext_domains(["predict", "--bundle", str(bundle), str(tmp_path), "--out", str(tmp_path / "p")])
    assert not (tmp_path / "o").exists() and not (tmp_path / "p").exists()


@pytest.mark.parametrize("reader", ["image", "dicom", "geotiff_patch", "geotiff_scene"])
def test_predictor_imports_with_only_its_requirements(reader, fresh_venv, tmp_path):
    """Every module a bundle of this reader carries imports in the fresh venv after
    pip install -r requirements.txt (readers without a trained bundle in this file included)."""
    from core.predict_bundle import READERS

    meta = export.write_predictor(tmp_path, reader)
    assert meta["requirements"][:3] == [r for r in meta["requirements"] if r.split(">=")[0] in BASE]
    assert {r.split(">=")[0] for r in meta["requirements"]} == BASE | set(READERS[reader].packages)
    _run([fresh_venv / "pip", "install", "-q", "-r", tmp_path / "requirements.txt"], cwd=tmp_path)
    code = ("import importlib, sys; sys.path.insert(0, sys.argv[1]); "
            "[importlib.import_module(m) for m in sys.argv[2:]]; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'lightning', 'timm')))")
    probe = _run([fresh_venv / "python", "-c", code, tmp_path / "predictor", *meta["modules"]], cwd=tmp_path)
    assert probe.stdout.strip() == "[]"
