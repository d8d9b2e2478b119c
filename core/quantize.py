"""INT8 dynamic quantisation of an exported ``model.onnx`` with ONNX Runtime (no torch needed).

Dynamic quantisation stores the weights of the chosen operators as int8 and quantises their
activations at run time, so no calibration data is needed. ConvNeXt spends most of its time in
the pointwise MLPs (``MatMul`` in the exported graph); quantising only those is the default
because ONNX Runtime's CPU ``ConvInteger`` kernels are slower than its fp32 convolutions
(``benchmarks/inference.py`` measures both). ONNX Runtime's ``MatMul`` operator class covers
``Gemm`` too, so a linear classifier head is quantised as well. The output is a new file; the
fp32 model is kept.

Besides :func:`quantize_int8`, this module has what ``convnext-domains export --quantize int8``
needs beyond the quantisation itself: which nodes were quantised (:func:`quantized_nodes`),
whether the installed ONNX Runtime can run the result (:func:`check_loads`) and the speed of
the two models on this machine (:func:`compare_speed`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import statistics
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.atomic import write_atomic

#: Operators quantised by default (see the module docstring).
DEFAULT_OP_TYPES: tuple[str, ...] = ("MatMul",)
#: The int8 operators that dynamic quantisation puts in place of the float ones.
INTEGER_OPS = ("MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul")
#: The float operators dynamic quantisation can replace (counted when they stay float).
FLOAT_OPS = ("MatMul", "Gemm", "Conv")
METHOD = ("ONNX Runtime dynamic quantisation: int8 weights, activations quantised to uint8 at "
          "run time with one scale per tensor per run")


class _DropPreprocessAdvice(logging.Filter):
    """ONNX Runtime's quantiser logs advice to run its shape pre-processing on every call; it
    concerns static quantisation of models with unknown shapes and is noise here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "consider to run pre-processing" not in record.getMessage()


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    advice = _DropPreprocessAdvice()
    logging.root.addFilter(advice)
    try:
        yield
    finally:
        logging.root.removeFilter(advice)


def quantize_int8(src: str | Path, dst: str | Path, op_types: Sequence[str] = DEFAULT_OP_TYPES,
                  per_channel: bool = False) -> Path:
    """Write ``dst``: ``src`` with int8 weights for ``op_types``, activations quantised at run time.

    Args:
        src: the fp32 ONNX model (e.g. a bundle's ``model.onnx``).
        dst: where to write the quantised model; written under a temporary name and renamed,
            so a failure never leaves a partial file (``dst`` may equal ``src``).
        op_types: ONNX operator types to quantise, e.g. ``("MatMul",)`` or ``("MatMul", "Conv")``.
        per_channel: one scale per output channel of each weight instead of one per tensor.

    Returns:
        ``dst`` as a Path.

    Raises:
        ValueError: ``src`` is missing or not an ONNX model, or ``op_types`` is empty.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise ValueError(f"ONNX model '{src}' does not exist; export a bundle first "
                         "(convnext-domains export ...) and pass its model.onnx")
    if not op_types:
        raise ValueError("op_types is empty; give the operators to quantise, e.g. ['MatMul']")
    model = _load(src)

    def write(tmp: Path) -> None:
        with _quiet_quantizer():
            quantize_dynamic(model, tmp, op_types_to_quantize=list(op_types),
                             per_channel=per_channel, weight_type=QuantType.QInt8)

    return write_atomic(dst, write)


def quantized_nodes(path: str | Path) -> tuple[int, dict[str, int]]:
    """``(int8 nodes, {float op type: count})`` of an ONNX model: how many nodes dynamic
    quantisation replaced (:data:`INTEGER_OPS`) and which :data:`FLOAT_OPS` stayed float."""
    graph = _load(Path(path)).graph
    ops = [node.op_type for node in graph.node]
    return (sum(op in INTEGER_OPS for op in ops),
            {op: ops.count(op) for op in FLOAT_OPS if op in ops})


def check_loads(path: str | Path) -> None:
    """Open ``path`` in an ONNX Runtime CPU session, as a receiver's predictor will.

    Raises:
        ValueError: the installed onnxruntime cannot run the model (e.g. no ``ConvInteger``
            kernel for int8 weights in onnxruntime 1.18), naming its version and the reason.
    """
    import onnxruntime as ort

    try:
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as err:  # ORT raises its own exception types, named by status code
        reason = str(err).strip().splitlines()[-1][-300:] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"onnxruntime {ort.__version__} cannot run the INT8 model '{path}' ({reason}); quantise "
            f"only {', '.join(DEFAULT_OP_TYPES)} (the default) or export without --quantize") from None


def _cpu_session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def compare_speed(fp32: str | Path, int8: str | Path, batch: np.ndarray, rounds: int = 5) -> dict[str, Any]:
    """Milliseconds per image of the two models on ``batch``, ONNX Runtime on this machine's CPU.

    The models run in alternation (fp32, int8, fp32, ...) after one untimed run each, so a
    change of machine load hits both alike; each figure is the median of ``rounds`` runs.
    ONNX Runtime uses its default thread count (one per core).

    Returns:
        ``fp32_ms_per_image``, ``int8_ms_per_image``, ``speedup`` (fp32 time / int8 time),
        ``batch``, ``rounds`` and ``cpu_cores``.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    batch = np.ascontiguousarray(batch, dtype=np.float32)
    sessions = {"fp32": _cpu_session(Path(fp32)), "int8": _cpu_session(Path(int8))}
    feeds = {name: {s.get_inputs()[0].name: batch} for name, s in sessions.items()}
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for name, session in sessions.items():
        session.run(None, feeds[name])  # first run allocates; not timed
    for _ in range(rounds):
        for name, session in sessions.items():
            start = time.perf_counter()
            session.run(None, feeds[name])
            times[name].append(time.perf_counter() - start)
    per_image = {name: 1000 * statistics.median(t) / len(batch) for name, t in times.items()}
    return {"fp32_ms_per_image": per_image["fp32"], "int8_ms_per_image": per_image["int8"],
            "speedup": per_image["fp32"] / per_image["int8"], "batch": int(len(batch)),
            "rounds": rounds, "cpu_cores": os.cpu_count() or 1}


def _load(path: Path):
    import onnx

    try:
        return onnx.load(str(path))
    except Exception as err:  # protobuf decode errors name no file
        raise ValueError(f"'{path}' is not a readable ONNX model ({type(err).__name__}); "
                         "pass the model.onnx of an exported bundle") from None
