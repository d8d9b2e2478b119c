"""Image reading and evaluation preprocessing with numpy and PIL only.

Training's evaluation pipeline and the torch-free bundle predictor both use these functions,
so an exported model sees exactly the pixels the Lightning model saw.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from core.errors import DataError

Channels = Literal["gray", "rgb"]
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def expand_inputs(inputs: Sequence[str | Path], extensions: Sequence[str]) -> list[Path]:
    """Files, and the matching files inside folders, in a stable order."""
    files: list[Path] = []
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            files += sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in extensions)
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


def read_image_file(path: str | Path, channels: Channels) -> np.ndarray:
    """Read an image file as HWC float32 in [0, 1] with the expected channel layout."""
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            if mode == "P":
                img = img.convert("RGBA" if "transparency" in img.info else "RGB")
                mode = img.mode
            if mode in ("RGBA", "LA") and img.getextrema()[-1][0] == 255:
                img = img.convert("RGB" if mode == "RGBA" else "L")  # fully opaque alpha carries nothing
                mode = img.mode
            array = np.asarray(img)
            if mode.startswith("I;16"):
                array = array.astype(np.uint16)
    except FileNotFoundError as err:
        raise DataError(f"image file '{path}' does not exist; fix the path or remove it from the list") from err
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DataError(
            f"cannot read image '{path}' ({err}); the file is corrupt or not an image: replace or "
            "delete it"
        ) from err
    found = 1 if array.ndim == 2 else array.shape[2]
    wanted = 1 if channels == "gray" else 3
    if found != wanted:
        raise DataError(
            f"image '{path}' has {found} channel(s) (mode {mode}) but the data module expects "
            f"{wanted} (channels: {channels}); set data.init_args.channels to "
            f"{'rgb' if found >= 3 else 'gray'} or convert the file"
        )
    array = scale_to_unit(array)
    return array[:, :, None] if array.ndim == 2 else array


def detect_channels(path: str | Path) -> Channels:
    """Guess gray/rgb from one image file's mode."""
    try:
        with Image.open(path) as img:
            return "gray" if img.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "F") else "rgb"
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
