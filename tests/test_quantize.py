"""core.quantize: INT8 dynamic quantisation of an ONNX model, torch-free, written atomically."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from core.quantize import quantize_int8  # noqa: E402
from core.torch_free import BLOCKED  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def tiny_model(path: Path, seed: int = 0) -> Path:
    """x (N, 16) -> MatMul(16x32) -> Relu -> MatMul(32x4) -> logits, written with plain onnx
    (MatMul is what the default quantises)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array(rng.normal(0, 0.3, (16, 32)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(0, 0.3, (32, 4)).astype(np.float32), "w2")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "w2"], ["logits"])],
        "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])], [w1, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def run(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def test_quantised_model_loads_and_stays_close_to_fp32(tmp_path):
    src = tiny_model(tmp_path / "model.onnx")
    dst = quantize_int8(src, tmp_path / "out" / "model_int8.onnx")
    assert dst == tmp_path / "out" / "model_int8.onnx" and dst.is_file()
    ops = [n.op_type for n in onnx.load(str(dst)).graph.node]
    assert "MatMulInteger" in ops and "MatMul" not in ops  # both weights are int8 now
    weights = {i.name: i for i in onnx.load(str(dst)).graph.initializer}
    assert any(i.data_type == onnx.TensorProto.INT8 for i in weights.values())
    x = np.random.default_rng(1).normal(0, 1, (8, 16)).astype(np.float32)
    fp32, int8 = run(src, x), run(dst, x)
    # int8 weights: ~1% of each weight's range per step; logits are O(1).
    assert np.abs(fp32 - int8).max() < 0.1
    assert (fp32.argmax(1) == int8.argmax(1)).mean() >= 0.75
    assert not list(tmp_path.glob("out/.*partial*"))  # no temporary file left behind
    assert src.stat().st_size > 0 and run(src, x).shape == (8, 4)  # fp32 model untouched


def test_in_place_and_per_channel(tmp_path):
    src = tiny_model(tmp_path / "model.onnx")
    x = np.ones((2, 16), dtype=np.float32)
    before = run(src, x)
    quantize_int8(src, src, per_channel=True)
    assert "MatMulInteger" in [n.op_type for n in onnx.load(str(src)).graph.node]
    assert np.abs(run(src, x) - before).max() < 0.1


def test_bad_inputs_name_the_file_and_leave_nothing(tmp_path):
    with pytest.raises(ValueError, match="missing.onnx' does not exist"):
        quantize_int8(tmp_path / "missing.onnx", tmp_path / "q.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not a model")
    with pytest.raises(ValueError, match="junk.onnx' is not a readable ONNX model"):
        quantize_int8(junk, tmp_path / "q.onnx")
    with pytest.raises(ValueError, match="op_types is empty"):
        quantize_int8(tiny_model(tmp_path / "m.onnx"), tmp_path / "q.onnx", op_types=())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.onnx", "m.onnx"]


def test_quantize_needs_no_torch(tmp_path):
    src = tiny_model(tmp_path / "model.onnx")
    code = (
        # None in sys.modules is what an environment without torch looks like to both `import`
        # (ModuleNotFoundError) and importlib.util.find_spec (None), which onnxruntime's
        # quantization tools call at import in older releases.
        "import sys\n"
        f"sys.modules.update(dict.fromkeys({sorted(BLOCKED)!r}))\n"
        "from core.quantize import quantize_int8\n"
        f"print(quantize_int8({str(src)!r}, {str(tmp_path / 'q.onnx')!r}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "q.onnx").is_file()
