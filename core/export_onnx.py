"""Export, step 2: trace the task's network to ONNX.

Only the network goes into ``model.onnx``: ``NCHW float32`` in, logits out, a dynamic batch axis
and fixed spatial sizes. Adaptive pooling that the legacy exporter cannot express is replaced,
for the trace only, by an exact fixed-size equivalent (:class:`FixedAdaptiveAvgPool2d`).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn


def _pool_matrix(size_in: int, size_out: int) -> Tensor:
    """``(size_out, size_in)`` averaging weights of adaptive pooling along one axis."""
    matrix = torch.zeros(size_out, size_in)
    for i in range(size_out):
        # The same bins as PyTorch: [floor(i * in / out), ceil((i + 1) * in / out)).
        start, end = (i * size_in) // size_out, -((-(i + 1) * size_in) // size_out)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


class FixedAdaptiveAvgPool2d(nn.Module):
    """Adaptive average pooling for one known input size, as two matrix products.

    The legacy ONNX exporter only handles adaptive pooling whose output size divides the input
    size; UPerNet's pyramid pooling (grids 1, 2, 3, 6 on e.g. a 2x2 map) does not. With the
    spatial size fixed at export, the pooling is a linear map that ONNX expresses as MatMul.
    """

    def __init__(self, size_in: Sequence[int], size_out: Sequence[int]) -> None:
        super().__init__()
        self.register_buffer("rows", _pool_matrix(size_in[0], size_out[0]))
        self.register_buffer("cols_t", _pool_matrix(size_in[1], size_out[1]).t().contiguous())

    def forward(self, x: Tensor) -> Tensor:
        return torch.matmul(torch.matmul(self.rows, x), self.cols_t)


@contextlib.contextmanager
def exportable_pools(model: nn.Module, example: Tensor) -> Iterator[int]:
    """Temporarily replace non-global ``nn.AdaptiveAvgPool2d`` by :class:`FixedAdaptiveAvgPool2d`.

    Sizes are recorded on ``example``; the original modules come back on exit (the parity
    check then compares the exported replacement against the untouched network). Yields the
    number of replaced modules.
    """
    sizes: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, nn.AdaptiveAvgPool2d):
            def record(mod, args, output, name=name):
                sizes[name] = (tuple(args[0].shape[-2:]), tuple(output.shape[-2:]))
            hooks.append(module.register_forward_hook(record))
    if hooks:
        try:
            with torch.no_grad():
                model(example)
        finally:
            for hook in hooks:
                hook.remove()
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    try:
        for name, (size_in, size_out) in sizes.items():
            if size_out == (1, 1):
                continue  # global pooling exports as GlobalAveragePool
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            original = getattr(parent, child)
            setattr(parent, child, FixedAdaptiveAvgPool2d(size_in, size_out))
            swapped.append((parent, child, original))
        yield len(swapped)
    finally:
        for parent, child, original in reversed(swapped):
            setattr(parent, child, original)


def write_onnx(model: nn.Module, path: Path, shape: Sequence[int], opset: int = 17) -> None:
    """Export ``model`` (eval mode) to ``path``: input ``input`` ``(batch, *shape)``, output ``logits``."""
    # Batch 2, not 1: the tracer may freeze size-1 dimensions; parity then runs another batch size.
    example = torch.zeros(2, *shape)
    with exportable_pools(model, example), warnings.catch_warnings():
        # The TorchScript exporter is deliberate (the dynamo one needs onnxscript); its
        # deprecation notice is no news to the user.
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=".*The feature will be removed.*")
        # Spatial sizes are fixed by design (only the batch axis is dynamic); a batch-dependent
        # trace would be caught by the parity check, which runs another batch size.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            model, (example,), str(path), dynamo=False, opset_version=opset,
            input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
