"""INT8 dynamic quantisation of an exported ``model.onnx`` with ONNX Runtime (no torch needed).

Dynamic quantisation stores the weights of the chosen operators as int8 and quantises their
activations at run time, so no calibration data is needed. ConvNeXt spends most of its time in
the pointwise MLPs (``MatMul`` in the exported graph); quantising only those is the default
because ONNX Runtime's CPU ``ConvInteger`` kernels are slower than its fp32 convolutions
(``benchmarks/inference.py`` measures both). The output is a new file; the fp32 model is kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from core.atomic import write_atomic

#: Operators quantised by default (see the module docstring).
DEFAULT_OP_TYPES: tuple[str, ...] = ("MatMul",)


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
        quantize_dynamic(model, tmp, op_types_to_quantize=list(op_types), per_channel=per_channel,
                         weight_type=QuantType.QInt8)

    return write_atomic(dst, write)


def _load(path: Path):
    import onnx

    try:
        return onnx.load(str(path))
    except Exception as err:  # protobuf decode errors name no file
        raise ValueError(f"'{path}' is not a readable ONNX model ({type(err).__name__}); "
                         "pass the model.onnx of an exported bundle") from None
