"""Run the ``convnext-domains`` command in a child process where the training stack cannot be
imported, proving that bundle prediction needs only onnxruntime, numpy and the readers."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence

BLOCKED = ("torch", "torchvision", "torchmetrics", "lightning", "pytorch_lightning", "timm",
           "albumentations")

_CHILD = """
import importlib.abc, sys
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ImportError(f"{{name}} is blocked: this run must not need the training stack")
sys.meta_path.insert(0, _Block())
from core.entry import main
main({argv!r})
"""


def run_without_torch(argv: Sequence[str], **kwargs) -> subprocess.CompletedProcess:
    """``convnext-domains ARGV`` in a fresh interpreter with torch & co. made unimportable."""
    code = _CHILD.format(blocked=set(BLOCKED), argv=list(argv))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, **kwargs)
