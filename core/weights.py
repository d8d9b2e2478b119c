"""Pretrained weights for the ConvNeXt backbone: local files, the timm hub, stem adaptation."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

HUB_HOST = "huggingface.co"
# Prefixes that wrappers (DDP, Lightning tasks, other repos) put in front of timm's keys.
_KNOWN_PREFIXES = ("module.", "model.", "net.", "backbone.", "encoder.", "_orig_mod.")
_NESTED_KEYS = ("state_dict", "model", "model_ema", "state_dict_ema", "module")
STEM_KEY = "stem.0.weight"


class PretrainedWeightsError(RuntimeError):
    """Pretrained weights were asked for but cannot be loaded; the message says how to fix it."""


def hub_reachable(host: str = HUB_HOST, port: int = 443, timeout: float = 3.0) -> bool:
    """Return whether a TCP connection to the weights hub opens within ``timeout`` seconds.

    DNS lookups ignore socket timeouts, so the probe runs in a daemon thread that is
    abandoned when it takes too long: offline machines must fail in seconds, not minutes.
    """
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(result and result[0])


def hub_offline_message(model_name: str) -> str:
    return (
        f"pretrained=true asks timm to download '{model_name}' weights from the Hugging Face hub, "
        "but the hub cannot be reached from this machine. Pass a local weights file instead, "
        "e.g. in YAML `model.init_args.pretrained: /path/to/convnext_weights.safetensors` or on the "
        "command line `--model.init_args.pretrained /path/to/weights.pth` (.safetensors, .pth, .pt "
        "and .bin are accepted), or use pretrained: false to train from scratch."
    )


def hub_is_offline(reachable: Callable[[], bool] = hub_reachable) -> bool:
    """True when the user forced offline mode or the hub cannot be reached."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}:
        return True
    return not reachable()


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a weights file (.safetensors or a torch pickle, loaded with ``weights_only=True``)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise PretrainedWeightsError(
            f"pretrained weights file '{file}' does not exist. Give the path of a .safetensors, "
            ".pth, .pt or .bin file, or use pretrained: false."
        )
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: object = load_file(str(file), device="cpu")
        else:
            obj = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # the library's own error is not actionable for a user
        raise PretrainedWeightsError(
            f"could not read pretrained weights '{file}': {err}. Expected a .safetensors file or a "
            "torch state dict saved with torch.save (weights only)."
        ) from err
    return _unwrap(obj, file)


def _unwrap(obj: object, file: Path) -> dict[str, Tensor]:
    while isinstance(obj, Mapping):
        tensors = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
        if tensors and len(tensors) >= len(obj) / 2:
            return tensors
        nested = next((obj[k] for k in _NESTED_KEYS if isinstance(obj.get(k), Mapping)), None)
        if nested is None:
            break
        obj = nested
    raise PretrainedWeightsError(f"'{file}' holds no state dict of tensors (keys: {_preview(obj)}).")


def _preview(obj: object) -> str:
    return ", ".join(list(map(str, obj))[:8]) if isinstance(obj, Mapping) else type(obj).__name__


def strip_prefixes(state_dict: dict[str, Tensor], expected: set[str]) -> dict[str, Tensor]:
    """Remove wrapper prefixes (``module.``, ``model.``, ...) until keys look like the model's."""
    current = dict(state_dict)
    for _ in range(4):
        if any(k in expected for k in current):
            return current
        prefix = next((p for p in _KNOWN_PREFIXES if all(k.startswith(p) for k in current)), None)
        if prefix is None:
            # Mixed checkpoints (e.g. a Lightning task with a head): keep only the backbone part.
            prefix = next(
                (p for p in _KNOWN_PREFIXES if any(k.startswith(p) for k in current)), None
            )
            if prefix is None:
                return current
            current = {k: v for k, v in current.items() if k.startswith(prefix)}
        current = {k[len(prefix) :]: v for k, v in current.items()}
    return current


RGB_ALIASES = {
    0: {"r", "red", "b4"},  # B4/B3/B2: Sentinel-2 and Landsat 8/9 band numbers
    1: {"g", "green", "b3"},
    2: {"b", "blue", "b2"},
}


def rgb_index_from_names(names: Sequence[str] | None) -> list[int | None] | None:
    """Per channel 0/1/2 for red/green/blue (by name), else None; None when no name matches."""
    if not names:
        return None
    index = [next((i for i, aliases in RGB_ALIASES.items() if n.strip().lower() in aliases), None)
             for n in names]
    return index if any(i is not None for i in index) else None


def adapt_stem(weight: Tensor, in_chans: int, rgb_index: list[int | None] | None = None) -> Tensor:
    """Adapt an RGB stem convolution ``[out, 3, k, k]`` to ``in_chans`` inputs.

    With ``rgb_index`` (one entry per input channel: 0/1/2 for R/G/B, None otherwise) channels
    that are red, green or blue get the matching pretrained filter and the others the mean
    filter; the result is rescaled so the activation scale matches the 3-channel original.
    Without it timm's channel-blind tiling is used.
    """
    if weight.shape[1] == in_chans and rgb_index is None:
        return weight
    if rgb_index is None:
        from timm.models._manipulate import adapt_input_conv

        return adapt_input_conv(in_chans, weight)
    if len(rgb_index) != in_chans:
        raise ValueError(f"rgb_index has {len(rgb_index)} entries for {in_chans} input channels")
    mean = weight.mean(dim=1)
    channels = [weight[:, i] if i is not None else mean for i in rgb_index]
    return torch.stack(channels, dim=1) * (weight.shape[1] / in_chans)


def load_local_weights(
    model: nn.Module,
    path: str | os.PathLike,
    filter_fn: Callable[[dict[str, Tensor], nn.Module], dict[str, Tensor]] | None = None,
    rgb_index: list[int | None] | None = None,
) -> dict[str, list[str]]:
    """Load a local weights file into a timm ConvNeXt, adapting the stem and skipping the head.

    Returns the keys that were skipped (``head``: classifier of another task) so callers can
    report them. Raises :class:`PretrainedWeightsError` when the file does not fit the model.
    """
    target = model.state_dict()
    state = strip_prefixes(read_state_dict(path), set(target))
    if filter_fn is not None:
        state = filter_fn(state, model)
    if STEM_KEY in state and STEM_KEY in target:
        in_chans = target[STEM_KEY].shape[1]
        if state[STEM_KEY].shape[1] != in_chans:
            state[STEM_KEY] = adapt_stem(state[STEM_KEY], in_chans, rgb_index)

    skipped_head = [
        k for k, v in state.items() if k.startswith("head.fc") and k in target and v.shape != target[k].shape
    ]
    for key in skipped_head:
        state.pop(key)
    mismatched = [f"{k}: file {tuple(v.shape)} vs model {tuple(target[k].shape)}"
                  for k, v in state.items() if k in target and v.shape != target[k].shape]
    missing = [k for k in target if k not in state and not k.startswith("head.fc")]
    if mismatched or missing:
        detail = "; ".join(mismatched[:3] or [f"missing {', '.join(missing[:5])}"])
        raise PretrainedWeightsError(
            f"weights in '{path}' do not fit this backbone ({len(mismatched)} shape mismatches, "
            f"{len(missing)} missing tensors; e.g. {detail}). Check that `backbone`, `depths` and "
            "`dims` match the architecture the file was trained with."
        )
    model.load_state_dict(state, strict=False)
    return {"head": skipped_head, "unused": [k for k in state if k not in target]}
