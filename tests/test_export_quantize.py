"""``convnext-domains export --quantize int8``: the bundle's model.onnx is INT8, its figures are
measured and recorded, the bundle verifies and predicts without torch; refusals are clear."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from core import export
from core.bundle import METADATA, MODEL, SCHEMA_FILE, SCHEMA_VERSION, BundleError, metadata_digest
from core.bundle_schema import metadata_schema
from core.bundle_verify import verify_bundle
from core.cli import run_cli
from core.detection import DetectionTask
from core.image_reader import IMAGE
from core.readers import READERS, contract_json
from core.segmentation import SegmentationTask
from core.torch_free import BLOCKED, run_without_torch

from .conftest import TINY, make_defect_folders

ROOT = Path(__file__).resolve().parents[1]
QUANTISED_OPS = {"MatMulInteger", "DynamicQuantizeLinear", "ConvInteger"}
# convnext_tiny's blocks have Linear MLPs (MatMul in the graph), unlike atto..nano's 1x1 convs.
BACKBONE = ["--model.init_args.backbone=convnext_tiny", f"--model.init_args.depths={TINY['depths']}",
            f"--model.init_args.dims={TINY['dims']}"]


def _export(*argv: str) -> str:
    """Run ``convnext-domains export`` in-process; its stdout."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert export.main(list(argv)) == 0
    return out.getvalue()


def _ops(bundle: Path) -> Counter:
    return Counter(node.op_type for node in onnx.load(str(bundle / MODEL)).graph.node)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    """A tiny gray defect classifier trained for one epoch through the CLI, exported twice:
    with --quantize int8 and without."""
    torch.set_num_threads(2)
    tmp = tmp_path_factory.mktemp("quantize")
    root = make_defect_folders(tmp / "data", per_class=6)
    base = ["--config", str(ROOT / "configs" / "manufacturing" / "folder.yaml"), *BACKBONE,
            f"--data.init_args.root={root}", "--data.init_args.image_size=32",
            "--data.init_args.batch_size=4", "--data.init_args.num_workers=0",
            f"--trainer.logger.init_args.save_dir={tmp / 'runs'}"]
    fit = run_cli(["fit", *base, "--trainer.max_epochs=1"])
    ckpt = fit.trainer.checkpoint_callback.best_model_path
    printed = _export("--ckpt", ckpt, "--out", str(tmp / "int8"), "--quantize", "int8")
    _export("--ckpt", ckpt, "--out", str(tmp / "fp32"))
    return {"root": root, "base": base, "ckpt": ckpt, "int8": tmp / "int8", "fp32": tmp / "fp32",
            "printed": printed, "tmp": tmp}


def _meta(bundle: Path) -> dict:
    return json.loads((bundle / METADATA).read_text())


# ---- the INT8 bundle ---------------------------------------------------------------------------
def test_int8_bundle_holds_the_quantised_graph(run):
    ops = _ops(run["int8"])
    assert ops["MatMulInteger"] > 0 and ops["DynamicQuantizeLinear"] > 0
    assert ops["MatMul"] == ops["Gemm"] == 0  # every MLP layer and the head are int8 now
    assert ops["ConvInteger"] == 0 and ops["Conv"] > 0  # convolutions stay float (the default)
    # Readable like every other file of the bundle (not the temporary file's private 0600).
    assert (run["int8"] / MODEL).stat().st_mode == (run["int8"] / "README.md").stat().st_mode
    weights = onnx.load(str(run["int8"] / MODEL)).graph.initializer
    assert any(w.data_type == onnx.TensorProto.INT8 for w in weights)
    q = _meta(run["int8"])["quantization"]
    assert (q["mode"], q["op_types"], q["per_channel"]) == ("int8", ["MatMul"], False)
    # 1 + 1 + 1 + 1 blocks with two MLP layers each, and the head: 9 layers.
    assert q["quantized_nodes"] == ops["MatMulInteger"] == 9
    assert q["float_nodes"] == {"Conv": ops["Conv"]}


def test_recorded_figures_are_those_recomputed_here(run):
    meta = _meta(run["int8"])
    q, parity = meta["quantization"], meta["parity"]
    task = export.rebuild_task(export.load_checkpoint(Path(run["ckpt"])), Path(run["ckpt"]))
    # The parity inputs as export draws them: 4 seeded standard normal images of (1, 32, 32).
    images = torch.randn(4, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    expected = export.lightning_probabilities(task, images).astype(np.float64)
    session = onnxruntime.InferenceSession(str(run["int8"] / MODEL), providers=["CPUExecutionProvider"])

    def probs(x: torch.Tensor) -> np.ndarray:
        logits = session.run(None, {"input": x.numpy()})[0].astype(np.float64)
        e = np.exp(logits - logits.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    batch, single = probs(images), probs(images[:1])
    diff = max(np.abs(batch - expected).max(), np.abs(single - expected[:1]).max())
    agree = [*(batch.argmax(1) == expected.argmax(1)), *(single.argmax(1) == expected[:1].argmax(1))]
    assert q["max_prob_diff"] == pytest.approx(diff, abs=1e-6)
    assert q["top1_agreement"] == pytest.approx(sum(agree) / 5)  # 4 images in a batch + 1 alone
    assert q["samples"] == parity["samples"] == 4 and q["tolerance"] == 0.05
    assert q["fp32_max_prob_diff"] == parity["max_abs_diff"] <= parity["tolerance"] == 1e-4
    # The INT8 graph really differs from the fp32 one (else nothing was quantised).
    assert q["max_prob_diff"] > q["fp32_max_prob_diff"]
    speed = q["speed"]
    assert speed["batch"] == 4 and speed["rounds"] == 5 and speed["cpu_cores"] >= 1
    assert speed["speedup"] == pytest.approx(speed["fp32_ms_per_image"] / speed["int8_ms_per_image"])
    printed = run["printed"]
    assert "(fp32 graph, before quantisation)" in printed
    assert (f"int8: 9 MatMul node(s) quantised; max |P_int8 - P_torch| = {q['max_prob_diff']:.3g}"
            in printed)
    assert f"top-1 agreement {q['top1_agreement']:.3f}" in printed


def test_int8_bundle_verifies_and_its_card_says_it_is_quantised(run):
    assert verify_bundle(run["int8"]).json_schema
    result = run_without_torch(["bundle", "verify", str(run["int8"])], cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    meta = _meta(run["int8"])
    assert meta["schema_version"] == "2.2"
    card = (run["int8"] / "README.md").read_text()
    q = meta["quantization"]
    assert "## Quantisation" in card and "INT8 dynamically quantised" in card
    assert f"| max probability difference, INT8 | {q['max_prob_diff']:.3g} |" in card
    assert f"| top-1 agreement | {q['top1_agreement']:.3f} |" in card
    assert "with the fp32 graph traced before quantisation" in card


def test_torch_free_predict_gives_lightning_top1(run, tmp_path):
    images = run["root"] / "scratch"
    result = run_without_torch(["predict", "--bundle", str(run["int8"]), str(images), "--out",
                                str(tmp_path / "ort")], cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    got = {Path(r["id"]).name: r for r in csv.DictReader((tmp_path / "ort" / "predictions.csv").open())}
    lightning = run_cli(["predict", *run["base"], f"--ckpt_path={run['ckpt']}",
                         f"--data.init_args.predict_paths=[{images}]"])
    want = {Path(r["id"]).name: r for r in
            csv.DictReader((Path(lightning.trainer.log_dir) / "predictions.csv").open())}
    assert sorted(got) == sorted(want) and len(got) == 6
    tolerance = _meta(run["int8"])["quantization"]["tolerance"]
    for name, row in want.items():
        assert abs(float(row["prob_scratch"]) - float(got[name]["prob_scratch"])) <= tolerance
        assert got[name]["predicted_class"] == row["predicted_class"], name


def test_the_bundles_own_predictor_runs_the_int8_model(run, tmp_path):
    copy = Path(shutil.copytree(run["int8"], tmp_path / "handed-over"))
    argv = [str(copy / "predict.py"), str(run["root"] / "good"), "--out", str(tmp_path / "out")]
    # The launcher as a receiver runs it, with the training stack unimportable.
    code = (f"import importlib.abc, runpy, sys\n"
            f"class Block(importlib.abc.MetaPathFinder):\n"
            f"    def find_spec(self, name, path=None, target=None):\n"
            f"        if name.split('.')[0] in {set(BLOCKED)!r}:\n"
            f"            raise ImportError(name + ' is blocked')\n"
            f"sys.meta_path.insert(0, Block())\n"
            f"sys.argv = {argv!r}\n"
            f"runpy.run_path({argv[0]!r}, run_name='__main__')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = list(csv.DictReader((tmp_path / "out" / "predictions.csv").open()))
    assert len(rows) == 6 and {r["predicted_class"] for r in rows} <= {"good", "scratch"}


def test_segmentation_agreement_is_counted_per_pixel(tmp_path):
    names = ["water", "crop", "soil"]
    torch.manual_seed(0)
    task = SegmentationTask(**TINY, in_chans=1, num_classes=3, class_names=names, decoder_channels=16)
    contract = IMAGE.contract(channels="gray", in_chans=1, image_size=32, mean=[0.4], std=[0.1],
                              class_names=names)
    torch.save({"task_class": "core.segmentation.SegmentationTask", "hyper_parameters": dict(task.hparams),
                "state_dict": task.state_dict(), "preprocessing": contract_json(contract, SCHEMA_VERSION),
                "preprocessing_schema": SCHEMA_VERSION}, tmp_path / "seg.ckpt")
    bundle = export.export_bundle(tmp_path / "seg.ckpt", tmp_path / "b", quantize="int8")
    q = _meta(bundle)["quantization"]
    # convnext_atto's MLPs are 1x1 convolutions: what is quantised here are the pyramid pooling's
    # fixed averaging matrices (constant weights); the MatMuls of two activations stay float.
    assert q["quantized_nodes"] == _ops(bundle)["MatMulInteger"] > 0 and q["float_nodes"]["Conv"] > 0
    pixels = 5 * 32 * 32  # 4 images as a batch + the first alone, every pixel's argmax
    assert round(q["top1_agreement"] * pixels) == pytest.approx(q["top1_agreement"] * pixels, abs=1e-6)
    assert 0 < q["max_prob_diff"] <= 0.05
    assert f"| top-1 agreement (per pixel) | {q['top1_agreement']:.3f} |" in (bundle / "README.md").read_text()


# ---- the default is unchanged ------------------------------------------------------------------
def test_default_export_is_fp32_without_quantisation(run):
    ops = _ops(run["fp32"])
    assert not QUANTISED_OPS & set(ops) and ops["MatMul"] > 0
    meta = _meta(run["fp32"])
    assert "quantization" not in meta
    assert "## Quantisation" not in (run["fp32"] / "README.md").read_text()
    assert verify_bundle(run["fp32"]).json_schema


def test_default_export_stays_schema_2_1_and_int8_is_2_2(run):
    plain, int8 = _meta(run["fp32"]), _meta(run["int8"])
    assert plain["schema_version"] == SCHEMA_VERSION == "2.1" and "quantization" not in plain
    assert "2.2" not in plain["changelog"] and "2.2" not in (run["fp32"] / SCHEMA_FILE).read_text()
    # The plain bundle's schema is byte for byte the one a 2.1 writer wrote: old readers that
    # compare it with their own still accept it.
    assert json.loads((run["fp32"] / SCHEMA_FILE).read_text()) == metadata_schema(READERS["image"], "2.1")
    assert int8["schema_version"] == "2.2" and set(int8["changelog"]) >= {"1.0", "2.0", "2.1", "2.2"}
    schema = json.loads((run["int8"] / SCHEMA_FILE).read_text())
    assert "quantization" in schema["required"] and schema["properties"]["schema_version"] == {"const": "2.2"}


def test_a_2_2_bundle_without_its_quantization_record_is_refused(run, tmp_path):
    copy = Path(shutil.copytree(run["int8"], tmp_path / "copy"))
    meta = _meta(copy)
    del meta["quantization"]
    meta["metadata_sha256"] = metadata_digest(meta)  # as a faulty writer would seal it
    (copy / METADATA).write_text(json.dumps(meta, indent=2))
    with pytest.raises(BundleError, match=r"does not match metadata\.schema\.json \(schema 2\.2\): "
                                          r"metadata: key\(s\) 'quantization' missing"):
        verify_bundle(copy)


# ---- refusals ----------------------------------------------------------------------------------
def test_a_bad_mode_is_an_argparse_error(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        export.main(["--ckpt", "x.ckpt", "--out", str(tmp_path / "b"), "--quantize", "int4"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "argument --quantize: invalid choice: 'int4'" in err and "int8" in err
    with pytest.raises(export.DataError, match="quantize must be one of none, int8, got 'int4'"):
        export.export_bundle("x.ckpt", tmp_path / "b", quantize="int4")
    assert not (tmp_path / "b").exists()


def test_detection_checkpoints_are_refused(tmp_path, capsys):
    torch.manual_seed(0)
    task = DetectionTask(detector="faster_rcnn", num_classes=2, class_names=["wide", "tall"],
                         in_chans=3, **{**TINY, "fpn_channels": 32})
    contract = IMAGE.contract(channels="rgb", in_chans=3, image_size=64, mean=[0.5] * 3, std=[0.25] * 3,
                              class_names=["wide", "tall"])
    torch.save({"task_class": "core.detection.DetectionTask", "hyper_parameters": dict(task.hparams),
                "state_dict": task.state_dict(), "preprocessing": contract_json(contract, SCHEMA_VERSION),
                "preprocessing_schema": SCHEMA_VERSION}, tmp_path / "det.ckpt")
    with pytest.raises(SystemExit) as exit_:
        export.main(["--ckpt", str(tmp_path / "det.ckpt"), "--out", str(tmp_path / "b"),
                     "--quantize", "int8"])
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "faster_rcnn detector: --quantize int8 is not supported" in err
    assert "export it without --quantize" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["det.ckpt"]  # nothing written


def test_an_int8_model_onnxruntime_cannot_run_is_a_clear_error(run, tmp_path, monkeypatch, capsys):
    real = onnxruntime.InferenceSession

    def no_integer_kernels(path, *args, **kwargs):
        if "MatMulInteger" in {n.op_type for n in onnx.load(str(path)).graph.node}:
            # What onnxruntime 1.18 says of a ConvInteger node with int8 weights.
            raise onnxruntime.capi.onnxruntime_pybind11_state.NotImplemented(
                "[ONNXRuntimeError] : 9 : NOT_IMPLEMENTED : Could not find an implementation for "
                "MatMulInteger(10) node with name '/MatMul_quant'")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", no_integer_kernels)
    with pytest.raises(SystemExit):
        export.main(["--ckpt", run["ckpt"], "--out", str(tmp_path / "b"), "--quantize", "int8"])
    err = capsys.readouterr().err
    assert f"error: onnxruntime {onnxruntime.__version__} cannot run the INT8 model" in err
    assert "NOT_IMPLEMENTED : Could not find an implementation for MatMulInteger" in err
    assert "export without --quantize" in err
    assert list(tmp_path.iterdir()) == []  # no bundle, no partial folder


def test_a_difference_above_the_int8_tolerance_fails_the_export(run, tmp_path, capsys):
    with pytest.raises(SystemExit):
        export.main(["--ckpt", run["ckpt"], "--out", str(tmp_path / "b"), "--quantize", "int8",
                     "--int8-tolerance", "1e-9"])
    err = capsys.readouterr().err
    q = _meta(run["int8"])["quantization"]
    # The same seeded inputs and model as the fixture's export: the same measured difference.
    assert (f"INT8 parity check failed: the quantised model's probabilities differ from PyTorch's "
            f"by up to {q['max_prob_diff']:.3g} on 4 seeded inputs (--int8-tolerance 1e-09") in err
    assert list(tmp_path.iterdir()) == []


def test_a_network_without_matmul_layers_is_refused(run, tmp_path, monkeypatch):
    monkeypatch.setattr(export, "quantized_nodes", lambda path: (0, {"Conv": 12}))
    with pytest.raises(export.DataError, match=r"found no MatMul layer to quantise in this "
                                               r"classification network \(float layers: \{'Conv': 12\}\)"):
        export.export_bundle(run["ckpt"], tmp_path / "b", quantize="int8")
    assert list(tmp_path.iterdir()) == []


def test_multilabel_agreement_is_per_label_at_one_half_not_argmax():
    """Independent sigmoid labels: one label flipping across 0.5 is a changed decision even when
    the argmax stays (hand-computed: 7 of 9 label decisions agree over the batch and the single
    run; an argmax count would report 1.000)."""
    from core.export_parity import check_int8_parity

    expected = np.array([[0.9, 0.2, 0.6], [0.4, 0.55, 0.1]])
    got = np.array([[0.9, 0.2, 0.45], [0.4, 0.55, 0.1]])

    class FakeBundle:
        def probabilities(self, images: np.ndarray) -> np.ndarray:
            return got[: len(images)]

    def reference(task, images):
        return expected[: len(images)]

    args = (None, FakeBundle(), (1, 4, 4), 2, 0.2, 0)
    per_label = check_int8_parity(*args, reference=reference, multilabel=True)
    assert per_label["top1_agreement"] == pytest.approx(7 / 9)
    assert per_label["max_prob_diff"] == pytest.approx(0.15)
    assert check_int8_parity(*args, reference=reference)["top1_agreement"] == 1.0
