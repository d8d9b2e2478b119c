import time

import pytest
import torch
from safetensors.torch import save_file

from core import weights
from core.backbone import ConvNeXtBackbone

from .conftest import TINY


def _same(a: dict, b: dict, skip=("head.fc",)) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a if not k.startswith(skip))


@pytest.mark.parametrize("fmt", ["safetensors", "pth", "lightning"])
def test_local_weights_are_loaded_exactly(tmp_path, fmt):
    source = ConvNeXtBackbone(**TINY, num_classes=7)
    state = source.model.state_dict()
    if fmt == "safetensors":
        path = tmp_path / "w.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    elif fmt == "pth":
        path = tmp_path / "w.pth"
        torch.save({"model": state}, path)
    else:  # a Lightning checkpoint of one of our tasks: keys live under state_dict/backbone.model.
        path = tmp_path / "w.ckpt"
        torch.save({"state_dict": {f"backbone.model.{k}": v for k, v in state.items()},
                    "epoch": 3}, path)
    target = ConvNeXtBackbone(**TINY, num_classes=2, pretrained=str(path))
    loaded = target.model.state_dict()
    assert _same(state, loaded)
    # The 7-class head of the file does not fit the 2-class task and stays freshly initialised.
    assert loaded["head.fc.weight"].shape == (2, 64)


def test_stem_is_adapted_to_other_channel_counts(tmp_path):
    source = ConvNeXtBackbone(**TINY, in_chans=3)
    path = tmp_path / "rgb.safetensors"
    save_file({k: v.contiguous() for k, v in source.model.state_dict().items()}, str(path))
    rgb = source.model.state_dict()["stem.0.weight"]
    gray = ConvNeXtBackbone(**TINY, in_chans=1, pretrained=str(path)).model.state_dict()
    assert torch.allclose(gray["stem.0.weight"][:, 0], rgb.sum(dim=1), atol=1e-6)
    assert _same(source.model.state_dict(), gray, skip=("head.fc", "stem.0.weight"))
    multi = ConvNeXtBackbone(**TINY, in_chans=13, pretrained=str(path)).model.state_dict()
    assert multi["stem.0.weight"].shape[1] == 13


def test_band_aware_stem_uses_matching_rgb_filters():
    rgb = torch.randn(8, 3, 4, 4)
    adapted = weights.adapt_stem(rgb, 4, rgb_index=[2, 1, 0, None])  # B, G, R, NIR
    scale = 3 / 4
    assert torch.allclose(adapted[:, 0], rgb[:, 2] * scale)
    assert torch.allclose(adapted[:, 2], rgb[:, 0] * scale)
    assert torch.allclose(adapted[:, 3], rgb.mean(dim=1) * scale)


def test_mismatched_file_is_a_clear_error(tmp_path):
    other = ConvNeXtBackbone(**{**TINY, "dims": [16, 32, 64, 128]})
    path = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in other.model.state_dict().items()}, str(path))
    with pytest.raises(weights.PretrainedWeightsError, match="do not fit this backbone.*depths"):
        ConvNeXtBackbone(**TINY, pretrained=str(path))


def test_missing_or_garbage_file_is_a_clear_error(tmp_path):
    with pytest.raises(weights.PretrainedWeightsError, match="does not exist"):
        ConvNeXtBackbone(**TINY, pretrained=str(tmp_path / "nope.safetensors"))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(weights.PretrainedWeightsError, match="could not read"):
        ConvNeXtBackbone(**TINY, pretrained=str(junk))


def test_hub_weights_offline_fail_fast_with_local_file_hint(monkeypatch):
    monkeypatch.setattr(weights, "hub_reachable", lambda *a, **k: False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(weights.PretrainedWeightsError, match="Pass a local weights file") as info:
        ConvNeXtBackbone("convnext_atto", pretrained=True)
    assert "pretrained: /path/to" in str(info.value)
    # Also with the user's explicit offline switch, without probing the network at all.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(weights, "hub_reachable", lambda *a, **k: pytest.fail("probed the hub"))
    with pytest.raises(weights.PretrainedWeightsError, match="local weights file"):
        ConvNeXtBackbone("convnext_atto", pretrained="true")


def test_hub_probe_gives_up_on_its_timeout(monkeypatch):
    # A DNS lookup that hangs must not hang the caller: the probe thread is abandoned.
    def hang(*args, **kwargs):
        time.sleep(30)

    monkeypatch.setattr(weights.socket, "create_connection", hang)
    start = time.perf_counter()
    assert weights.hub_reachable(timeout=0.2) is False
    assert time.perf_counter() - start < 20  # returned long before the 30 s hang ended


def test_rgb_index_from_band_names():
    assert weights.rgb_index_from_names(["B2", "B3", "B4", "B8"]) == [2, 1, 0, None]
    assert weights.rgb_index_from_names(["red", "Green", "BLUE"]) == [0, 1, 2]
    assert weights.rgb_index_from_names(["SWIR1", "NDVI"]) is None
    assert weights.rgb_index_from_names(None) is None


def test_band_names_pick_rgb_filters_when_loading_weights(tmp_path):
    from core.classification import ClassificationTask

    source = ConvNeXtBackbone(**TINY, in_chans=3)
    path = tmp_path / "rgb.safetensors"
    save_file({k: v.contiguous() for k, v in source.model.state_dict().items()}, str(path))
    rgb = source.model.state_dict()["stem.0.weight"]
    task = ClassificationTask(**TINY, in_chans=4, num_classes=2, pretrained=str(path),
                              channel_names=["B4", "B3", "B2", "B8"])
    stem = task.backbone.model.stem[0].weight.detach()
    assert torch.allclose(stem[:, 0], rgb[:, 0] * 0.75)  # B4 = red
    assert torch.allclose(stem[:, 2], rgb[:, 2] * 0.75)  # B2 = blue
    assert torch.allclose(stem[:, 3], rgb.mean(dim=1) * 0.75)  # NIR: mean filter
