"""Test-time flips of the classification task: the averaged logits, eval only, and exported."""

from __future__ import annotations

import pytest
import torch

from core import export
from core.bundle import load_bundle
from core.classification import ClassificationTask

from .conftest import TINY


def _task(tta: str) -> ClassificationTask:
    torch.manual_seed(0)
    return ClassificationTask(**TINY, in_chans=1, num_classes=2, tta=tta).eval()


def test_flips_average_the_logits_of_the_four_views():
    task = _task("flips")
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        by_hand = sum(task.backbone(v) for v in (x, x.flip(-1), x.flip(-2), x.flip(-1).flip(-2))) / 4
        assert torch.allclose(task(x), by_hand, atol=1e-6)
        # The four views form a group: every flip of x gives the same prediction.
        for view in (x.flip(-1), x.flip(-2), x.flip(-2, -1)):
            assert torch.allclose(task(view), task(x), atol=1e-5)
        hflip = _task("hflip")
        assert torch.allclose(hflip(x), (hflip.backbone(x) + hflip.backbone(x.flip(-1))) / 2, atol=1e-6)


def test_training_and_none_use_the_plain_network():
    x = torch.randn(2, 1, 32, 32)
    task = _task("flips").train()
    torch.manual_seed(1)
    out = task(x)
    torch.manual_seed(1)
    assert torch.equal(out, task.backbone(x))
    plain = _task("none")
    with torch.no_grad():
        assert torch.equal(plain(x), plain.backbone(x))
        assert not torch.allclose(_task("flips")(x), plain(x))  # same seed, same weights


@pytest.mark.parametrize("tta", ["hflip", "flips"])
def test_exported_bundle_contains_the_flips(tta, tmp_path):
    task = _task(tta)
    ckpt = tmp_path / "tta.ckpt"
    torch.save({"task_class": "core.classification.ClassificationTask", "hyper_parameters": dict(task.hparams),
                "state_dict": task.state_dict(),
                "preprocessing": {"reader": "image", "in_chans": 1, "image_size": 32,
                                  "mean": [0.5], "std": [0.25]}}, ckpt)
    bundle = load_bundle(export.export_bundle(ckpt, tmp_path / "b"))
    assert bundle.meta["parity"]["max_abs_diff"] < 1e-4
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        expected = task(x).numpy()
        plain = task.backbone(x).numpy()
    got = bundle.logits(x.numpy())
    assert abs(got - expected).max() < 1e-4
    assert abs(got - plain).max() > 1e-3  # the flips are in the graph, not dropped at export
