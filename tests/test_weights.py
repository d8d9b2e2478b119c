import time

import pytest
import timm
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


HUB_REPO = "timm/convnext_atto.d2_in1k"  # timm's default hub weights of convnext_atto


def _no_download(*args, **kwargs):
    pytest.fail("tried to download from the hub")


def _fake_hub_cache(root, state):
    """A hub cache laid out as huggingface_hub writes it: refs/main -> snapshots/<commit>/file."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = root / ("models--" + HUB_REPO.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(snapshot / "model.safetensors"))
    return root


@pytest.mark.parametrize("value", [False, None, "", "false", "False", "no", "null"])
def test_pretrained_off_in_every_spelling(value):
    from core.classification import ClassificationTask

    assert weights.parse_pretrained(value).source == "none"
    # "False" from a CLI string used to count as pretrained (layer decay 0.8).
    assert ClassificationTask(**TINY, num_classes=2, pretrained=value).effective_layer_decay == 1.0


def test_pretrained_on_and_file_spellings(tmp_path):
    assert weights.parse_pretrained(True).source == "hub"
    assert weights.parse_pretrained("True").source == "hub"
    spec = weights.parse_pretrained(str(tmp_path / "w.safetensors"))
    assert (spec.source, spec.path) == ("file", tmp_path / "w.safetensors")


def test_hub_offline_uses_weights_already_in_the_local_cache(tmp_path, monkeypatch):
    import huggingface_hub

    source = timm.create_model("convnext_atto")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE",
                        str(_fake_hub_cache(tmp_path / "hub", source.state_dict())))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _no_download)
    backbone = ConvNeXtBackbone("convnext_atto", pretrained=True, num_classes=5)
    got = backbone.model.state_dict()
    assert torch.equal(got["stem.0.weight"], source.state_dict()["stem.0.weight"])
    assert torch.equal(got["stages.3.blocks.1.mlp.fc2.weight"],
                       source.state_dict()["stages.3.blocks.1.mlp.fc2.weight"])


def test_hub_weights_offline_fail_fast_with_local_file_hint(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _no_download)
    with pytest.raises(weights.PretrainedWeightsError, match="HF_HUB_OFFLINE is set.*Pass a local") as info:
        ConvNeXtBackbone("convnext_atto", pretrained="true")
    assert "pretrained: /path/to" in str(info.value)


def test_hub_download_gives_up_on_its_timeout(tmp_path, monkeypatch):
    import huggingface_hub

    def hang(*args, **kwargs):
        time.sleep(30)

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hang)
    start = time.perf_counter()
    with pytest.raises(weights.PretrainedWeightsError, match="no answer from the hub within 0.2 s"):
        weights.hub_weights_file("convnext_atto", timeout=0.2)
    assert time.perf_counter() - start < 20  # returned long before the 30 s hang ended


HUB_SCRIPT = """
import sys, torch
from core.backbone import ConvNeXtBackbone
model = ConvNeXtBackbone("convnext_atto", pretrained=True).model
ref = torch.load(sys.argv[1], weights_only=True)
print("equal" if all(torch.equal(model.state_dict()[k], v) for k, v in ref.items()
                     if not k.startswith("head.fc")) else "different")
"""


def test_hub_download_goes_through_hf_endpoint(tmp_path):
    # A mirror (HF_ENDPOINT) or proxy is honoured because huggingface_hub does the request; the old
    # raw socket to huggingface.co called such a machine offline.
    import http.server
    import subprocess
    import sys
    import threading
    from pathlib import Path

    source = timm.create_model("convnext_atto")
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    served = tmp_path / "model.safetensors"
    save_file(state, str(served))
    torch.save(state, tmp_path / "ref.pt")
    body = served.read_bytes()
    requests = []

    class Mirror(http.server.BaseHTTPRequestHandler):
        def _answer(self, send_body):
            requests.append(self.path)
            if self.path != f"/{HUB_REPO}/resolve/main/model.safetensors":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("ETag", '"fake-etag-1"')
            self.send_header("X-Repo-Commit", "0123456789abcdef0123456789abcdef01234567")
            self.end_headers()
            if send_body:
                self.wfile.write(body)

        def do_HEAD(self):
            self._answer(False)

        def do_GET(self):
            self._answer(True)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Mirror)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("HF_")}
        env.update(HF_ENDPOINT=f"http://127.0.0.1:{server.server_port}",
                   HF_HUB_CACHE=str(tmp_path / "cache"), NO_PROXY="127.0.0.1", no_proxy="127.0.0.1",
                   HF_HUB_DISABLE_XET="1")
        result = subprocess.run([sys.executable, "-c", HUB_SCRIPT, str(tmp_path / "ref.pt")],
                                cwd=Path(__file__).resolve().parents[1], env=env,
                                capture_output=True, text=True, timeout=300)
    finally:
        server.shutdown()
    assert result.stdout.strip() == "equal", result.stderr[-3000:]
    assert any(p.endswith("model.safetensors") for p in requests)


def test_rgb_index_from_band_names():
    # Band numbers say nothing by themselves (B4 is red on Sentinel-2, NIR on Landsat 7, and
    # an undescribed file's 4th band): only role names pick RGB filters.
    # Named channels without a role get the mean filter (None), not timm's positional tiling.
    assert weights.rgb_index_from_names(["B2", "B3", "B4", "B8"]) == [None] * 4
    assert weights.rgb_index_from_names(["b4", "B04", "SR_B4"]) == [None] * 3
    assert weights.rgb_index_from_names(["blue", "green", "red", "B8"]) == [2, 1, 0, None]
    assert weights.rgb_index_from_names(["red", "Green", "BLUE"]) == [0, 1, 2]
    assert weights.rgb_index_from_names(["R", "g", "b"]) == [0, 1, 2]
    assert weights.rgb_index_from_names(["SWIR1", "NDVI"]) == [None, None]
    assert weights.rgb_index_from_names(None) is None


def test_band_names_pick_rgb_filters_when_loading_weights(tmp_path):
    from core.classification import ClassificationTask

    source = ConvNeXtBackbone(**TINY, in_chans=3)
    path = tmp_path / "rgb.safetensors"
    save_file({k: v.contiguous() for k, v in source.model.state_dict().items()}, str(path))
    rgb = source.model.state_dict()["stem.0.weight"]
    task = ClassificationTask(**TINY, in_chans=4, num_classes=2, pretrained=str(path),
                              channel_names=["red", "green", "blue", "nir"])
    stem = task.backbone.model.stem[0].weight.detach()
    assert torch.allclose(stem[:, 0], rgb[:, 0] * 0.75)  # red
    assert torch.allclose(stem[:, 2], rgb[:, 2] * 0.75)  # blue
    assert torch.allclose(stem[:, 3], rgb.mean(dim=1) * 0.75)  # NIR: mean filter
    # Band numbers alone are no evidence: every channel gets the mean filter.
    numbered = ClassificationTask(**TINY, in_chans=4, num_classes=2, pretrained=str(path),
                                  channel_names=["B4", "B3", "B2", "B8"])
    stem = numbered.backbone.model.stem[0].weight.detach()
    assert torch.allclose(stem, rgb.mean(dim=1, keepdim=True).expand(-1, 4, -1, -1) * 0.75)
    # Three channels in another order get their own filters, not the file's stem as it is.
    bgr = ClassificationTask(**TINY, in_chans=3, num_classes=2, pretrained=str(path),
                             channel_names=["blue", "green", "red"])
    assert torch.allclose(bgr.backbone.model.stem[0].weight.detach(), rgb[:, [2, 1, 0]])
