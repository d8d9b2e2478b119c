"""Image reading and evaluation preprocessing with numpy and PIL only.

Training's evaluation pipeline and the torch-free bundle predictor both use these functions,
so an exported model sees exactly the pixels the Lightning model saw.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from core.errors import DataError

Channels = Literal["gray", "rgb"]
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def is_hidden(relative: Path) -> bool:
    """Whether a path below a searched folder is hidden: never a sample or an input.

    Dot files and folders (.DS_Store, ._x.png macOS AppleDouble forks, .ipynb_checkpoints/) and
    zip archives' __MACOSX/ (".DS_Store" even has the empty suffix of DICOM files without one).
    """
    return any(part.startswith(".") or part == "__MACOSX" for part in relative.parts)


def expand_inputs(inputs: Sequence[str | Path], extensions: Sequence[str]) -> list[Path]:
    """Files, and the matching files inside folders (hidden ones left out), in a stable order."""
    files: list[Path] = []
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            files += sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in extensions
                            and not is_hidden(q.relative_to(p)))
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"input '{p}' does not exist")
    if not files:
        raise DataError(f"no input files found in {[str(i) for i in inputs]} (looked for {', '.join(e or 'no extension' for e in extensions)})")
    return files


def scale_to_unit(array: np.ndarray) -> np.ndarray:
    """Integer images to float32 in [0, 1] by their dtype's range; floats pass through."""
    if np.issubdtype(array.dtype, np.integer):
        info = np.iinfo(array.dtype)
        return (array.astype(np.float32) - info.min) / float(info.max - info.min)
    return array.astype(np.float32)


# PIL modes of one-channel images; palette and colour modes count as rgb.
GRAY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F")
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
# ITU-R 601-2 luma, the weights PIL's own RGB -> L conversion uses.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def decode_image(path: str | Path) -> Image.Image:
    """Open an image file and decode all its pixels (truncated data only shows when decoded).

    Raises:
        DataError: the file is missing, corrupt or not an image, naming the file and the fix.
    """
    try:
        with Image.open(path) as img:
            img.load()
        return img  # decoded pixels stay usable after the file is closed
    except FileNotFoundError as err:
        raise DataError(f"image file '{path}' does not exist; fix the path or remove it from the list") from err
    except (UnidentifiedImageError, OSError, SyntaxError, EOFError, ValueError,
            Image.DecompressionBombError) as err:
        raise DataError(
            f"cannot read image '{path}' ({err}); the file is corrupt or not an image: replace or "
            "delete it"
        ) from err


def image_to_array(img: Image.Image, channels: Channels) -> tuple[np.ndarray, str | None]:
    """A decoded PIL image as HWC float32 in [0, 1] with ``channels``, and what was converted.

    The conversions (one rule for training, export and the torch-free predictor):

    * palette images are expanded to their colours; CMYK/YCbCr/LAB/HSV become RGB;
    * alpha is dropped, not composited: pixels keep the colour stored under them;
    * 16-bit gray (``I;16*``, and ``I`` as older Pillow opens 16-bit PNGs) keeps its full
      range: ``value / 65535``; other integers scale by their dtype range, floats pass through;
    * ``channels: gray`` turns colour into ITU-R 601-2 luma; ``channels: rgb`` repeats gray
      into three channels.

    Returns:
        The array and a short note of the conversion (None when the file was used as stored),
        e.g. ``"RGBA: alpha dropped"`` or ``"I;16: gray repeated to RGB"``.
    """
    mode, steps = img.mode, []
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in img.info
        img = img.convert("RGBA" if has_alpha else "RGB")
        steps.append("palette expanded")
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        img = img.convert("RGB")
        steps.append("converted to RGB")
    if img.mode in ("RGBA", "RGBa", "LA", "La"):
        img = img.convert("RGB" if img.mode.startswith("RGB") else "L")  # drops alpha, no compositing
        steps.append("alpha dropped")
    array = np.asarray(img)
    if img.mode in _SIXTEEN_BIT or (img.mode == "I" and img.format == "PNG"):
        # PNG holds at most 16 bits; Pillow < 11 opens 16-bit gray PNGs as 32-bit "I".
        array = array.astype(np.uint16)
    array = scale_to_unit(array)
    if array.ndim == 2:
        array = array[:, :, None]
    if channels == "gray" and array.shape[2] >= 3:
        array = np.tensordot(array[:, :, :3], _LUMA, axes=([2], [0]))[:, :, None].astype(np.float32)
        steps.append("colour to gray (luma)")
    elif channels == "rgb" and array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
        steps.append("gray repeated to RGB")
    return array, f"{mode}: {', '.join(steps)}" if steps else None


def read_image_file(path: str | Path, channels: Channels) -> np.ndarray:
    """Read an image file as HWC float32 in [0, 1] with ``channels`` (see :func:`image_to_array`)."""
    return image_to_array(decode_image(path), channels)[0]


@lru_cache(maxsize=64)
def conversion_note(mode: str, channels: Channels, transparency: bool = False) -> str | None:
    """What :func:`image_to_array` does to an image of PIL ``mode`` (derived from it, not restated).

    ``transparency``: the file has a ``transparency`` entry (palette images with alpha).
    """
    probe = Image.new(mode, (1, 1))
    if transparency:
        probe.info["transparency"] = 0
    return image_to_array(probe, channels)[1]


def image_channels(mode: str) -> Channels:
    """``gray`` or ``rgb``: the layout an image of PIL ``mode`` has as stored."""
    return "gray" if mode in GRAY_MODES else "rgb"


def detect_channels(path: str | Path) -> Channels:
    """Guess gray/rgb from one image file's mode."""
    try:
        with Image.open(path) as img:
            return image_channels(img.mode)
    except (OSError, UnidentifiedImageError) as err:
        raise DataError(f"cannot read image '{path}' ({err}); replace or delete it") from err


def image_hw(image_size: int | Sequence[int]) -> tuple[int, int]:
    """(height, width) from an int or an [h, w] pair."""
    if isinstance(image_size, int):
        return image_size, image_size
    h, w = image_size
    return int(h), int(w)


def resize_image(image: np.ndarray, size: int | Sequence[int], **_: object) -> np.ndarray:
    """Bilinear (antialiased when shrinking) resize of an HWC float32 image, channel by channel.

    NaN (nodata) stays NaN where it dominates; extra keyword arguments are accepted so the
    function can serve as an albumentations ``Lambda``.
    """
    h, w = image_hw(size)
    if image.shape[:2] == (h, w):
        return image
    out = np.empty((h, w, image.shape[2]), dtype=np.float32)
    for c in range(image.shape[2]):
        channel = Image.fromarray(np.ascontiguousarray(image[:, :, c], dtype=np.float32), mode="F")
        out[:, :, c] = np.asarray(channel.resize((w, h), Image.Resampling.BILINEAR))
    return out


def resize_mask(mask: np.ndarray, size: int | Sequence[int], **_: object) -> np.ndarray:
    """Nearest-neighbour resize of an HW label mask."""
    h, w = image_hw(size)
    if mask.shape[:2] == (h, w):
        return mask
    img = Image.fromarray(mask.astype(np.int32), mode="I")
    return np.asarray(img.resize((w, h), Image.Resampling.NEAREST)).astype(mask.dtype)


def normalize(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(x - mean) / std per channel; non-finite pixels (nodata) become 0, the channel mean."""
    out = (image - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)


def to_network_input(image: np.ndarray, size: int | Sequence[int], mean: Sequence[float],
                     std: Sequence[float]) -> np.ndarray:
    """HWC float32 image -> CHW network input, exactly as the evaluation pipeline does it."""
    return normalize(resize_image(image, size), mean, std).transpose(2, 0, 1).copy()
