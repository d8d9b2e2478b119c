"""Pretrained weights for the ConvNeXt backbone: local files, the timm hub, stem adaptation."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from core.errors import UserError

# Prefixes that wrappers (DDP, Lightning tasks, other repos) put in front of timm's keys.
_KNOWN_PREFIXES = ("module.", "model.", "net.", "backbone.", "encoder.", "_orig_mod.")
_NESTED_KEYS = ("state_dict", "model", "model_ema", "state_dict_ema", "module")
STEM_KEY = "stem.0.weight"


class PretrainedWeightsError(UserError, RuntimeError):
    """Pretrained weights were asked for but cannot be loaded; the message says how to fix it."""


# How long a hub download may try before we give up with the local-file advice. The hub client
# retries with backoff for ~25 s on a machine without DNS; a user waits at most this long.
HUB_TIMEOUT_S = float(os.environ.get("CONVNEXT_DOMAINS_HUB_TIMEOUT", "20"))
_FALSE_WORDS = {"", "false", "no", "none", "null", "off", "0"}
_TRUE_WORDS = {"true", "yes", "on", "1", "hub"}
_HUB_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass(frozen=True)
class Pretrained:
    """Where pretrained weights come from: nowhere, the timm hub, or a local file."""

    source: Literal["none", "hub", "file"]
    path: Path | None = None

    @property
    def used(self) -> bool:
        return self.source != "none"


def parse_pretrained(value: bool | str | os.PathLike | None) -> Pretrained:
    """The one reading of the ``pretrained`` option (YAML and CLI give bools or strings)."""
    if value is None or value is False:
        return Pretrained("none")
    if value is True:
        return Pretrained("hub")
    text = str(value).strip()
    if text.lower() in _FALSE_WORDS:
        return Pretrained("none")
    if text.lower() in _TRUE_WORDS:
        return Pretrained("hub")
    return Pretrained("file", Path(text).expanduser())


def hub_offline_message(model_name: str) -> str:
    return (
        f"pretrained=true asks for timm's '{model_name}' weights from the Hugging Face hub, "
        "but they are not in the local hub cache and cannot be downloaded. Pass a local weights "
        "file instead, e.g. in YAML `model.init_args.pretrained: /path/to/convnext_weights.safetensors` "
        "or on the command line `--model.init_args.pretrained /path/to/weights.pth` (.safetensors, "
        ".pth, .pt and .bin are accepted), or use pretrained: false to train from scratch."
    )


def _hub_offline() -> bool:
    """The user's offline switch, as huggingface_hub reads it (at import) or as set since."""
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}
    return flag or bool(getattr(constants, "HF_HUB_OFFLINE", False))


def hub_weights_file(model_name: str, timeout: float | None = None) -> Path:
    """A local path to timm's hub weights of ``model_name``: the hub cache, else a download.

    huggingface_hub does the work, so ``HF_HUB_CACHE``/``HF_HOME``, ``HF_ENDPOINT`` (mirrors),
    ``HTTPS_PROXY`` and ``HF_HUB_OFFLINE`` behave as users of the hub expect. The download runs
    in a daemon thread abandoned after ``timeout`` seconds: offline machines fail in seconds,
    with advice, instead of waiting for the client's retries.
    """
    import timm
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(model_name)
    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not repo:
        raise PretrainedWeightsError(f"timm knows no hub weights for '{model_name}'. "
                                     + hub_offline_message(model_name))
    for filename in _HUB_FILES:
        # The cache folder as huggingface_hub resolved it (HF_HUB_CACHE, HF_HOME); passed on
        # because older clients bind their default at import.
        cached = try_to_load_from_cache(repo, filename, cache_dir=constants.HF_HUB_CACHE)
        if isinstance(cached, str):
            return Path(cached)
    if _hub_offline():
        raise PretrainedWeightsError(f"HF_HUB_OFFLINE is set. {hub_offline_message(model_name)}")
    result: list[Path | BaseException] = []

    def download() -> None:
        try:
            result.append(Path(hf_hub_download(repo, _HUB_FILES[0])))
        except BaseException as err:  # noqa: BLE001 - reported to the caller below
            result.append(err)

    thread = threading.Thread(target=download, daemon=True)
    thread.start()
    thread.join(HUB_TIMEOUT_S if timeout is None else timeout)
    if not result:
        reason = f"no answer from the hub within {HUB_TIMEOUT_S if timeout is None else timeout:g} s"
    elif isinstance(result[0], BaseException):
        reason = f"{type(result[0]).__name__}: {result[0]}"
    else:
        return result[0]
    raise PretrainedWeightsError(f"{hub_offline_message(model_name)} ({reason})")


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


# Role names only. Band numbers are not here: B4 is red on Sentinel-2 and Landsat 8/9 but NIR
# on Landsat 5/7, and B1..Bn also name an undescribed file's bands by position. A datamodule
# that knows a channel's role from evidence names the channel by it.
RGB_ALIASES = {
    0: {"r", "red"},
    1: {"g", "green"},
    2: {"b", "blue"},
}


def rgb_index_from_names(names: Sequence[str] | None) -> list[int | None] | None:
    """Per channel 0/1/2 for channels named red/green/blue (or r/g/b), else None.

    Without names, None (:func:`adapt_stem` then tiles the RGB filters channel-blind). With
    names, channels not named by an RGB role get None, i.e. the mean filter: a named channel
    such as B4 never gets a colour filter from its number or position.
    """
    if not names:
        return None
    return [next((i for i, aliases in RGB_ALIASES.items() if n.strip().lower() in aliases), None)
            for n in names]


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
        # Also for 3 inputs whose names say they are not red, green, blue in that order (e.g.
        # blue, green, red): the file's stem would give the blue band the red filter.
        reorder = rgb_index is not None and rgb_index != [0, 1, 2] and any(i is not None for i in rgb_index)
        if state[STEM_KEY].shape[1] != in_chans or reorder:
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
