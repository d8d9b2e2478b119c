"""One policy for unusable input files, shared by every datamodule.

Every file of every split is checked once when the sample list is built, so a corrupt file in
the test split stops ``fit`` (``on_bad_file: error``) or is left out of all stages and reported
(``on_bad_file: skip``: a log warning and ``skipped_files.csv`` in the run directory), instead
of crashing ``test`` hours later. The image checks (decodability, conversions, tiny images)
live here too, so a cloned domain gets them by calling :func:`scan_images`.
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

from core.errors import DataError
from core.preprocess import Channels, conversion_note, decode_image, image_channels, image_hw

log = logging.getLogger(__name__)

OnBadFile = Literal["error", "skip"]
SKIPPED_REPORT = "skipped_files.csv"
# Images whose shorter side is below this share of the input size are upscaled so much that
# they are almost certainly thumbnails, icons or placeholders rather than inspection images.
SMALL_IMAGE_SHARE = 0.25
_SHOW = 10  # files named in one message; the rest are counted

T = TypeVar("T")


def check_files(paths: Sequence[str | Path], check: Callable[[Path], T], on_bad_file: OnBadFile,
                skipped: list[tuple[str, str]], what: str = "file") -> list[T | None]:
    """Run ``check`` on every file; a ``DataError`` is a bad file.

    Args:
        paths: the files to check.
        check: reads (part of) a file and returns what the caller needs; raises DataError.
        on_bad_file: ``error`` raises one DataError naming every bad file after checking all
            of them; ``skip`` appends ``(path, reason)`` to ``skipped`` and returns None there.
        skipped: the datamodule's list of skipped files (reported by :func:`write_skipped_report`).
        what: what a file is, for messages (``image``, ``DICOM file``).

    Returns:
        ``check``'s result per path, None for skipped files.
    """
    results: list[T | None] = []
    bad: list[tuple[str, str]] = []
    for path in paths:
        try:
            results.append(check(Path(path)))
        except DataError as err:
            bad.append((str(path), str(err)))
            results.append(None)
    if bad and on_bad_file == "error":
        if len(bad) == 1:
            raise DataError(f"{bad[0][1]} (or set data.init_args.on_bad_file: skip to leave it out)")
        raise DataError(f"{len(bad)} unreadable {what}s; replace or delete them, or set "
                        f"data.init_args.on_bad_file: skip to leave them out:\n{_listing(bad)}")
    skipped += bad
    return results


def record_bad(on_bad_file: OnBadFile, skipped: list[tuple[str, str]], path: str | Path,
               reason: str) -> None:
    """A bad entry found outside :func:`check_files` (e.g. a manifest row): raise or record it."""
    if on_bad_file == "error":
        raise DataError(f"{reason} (or set data.init_args.on_bad_file: skip to leave it out)")
    skipped.append((str(path), reason))


def log_skipped(skipped: Sequence[tuple[str, str]], what: str = "file") -> None:
    """One warning listing the skipped files and why."""
    if skipped:
        log.warning("skipped %d unreadable %s(s) (listed in %s):\n%s", len(skipped), what,
                    SKIPPED_REPORT, _listing(skipped))


def write_skipped_report(skipped: Sequence[tuple[str, str]], log_dir: str | Path | None) -> Path | None:
    """Write ``skipped_files.csv`` (path, reason) into the run directory; None when nothing to write."""
    if not skipped or log_dir is None:
        return None
    out = Path(log_dir) / SKIPPED_REPORT
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "reason"])
        writer.writerows(skipped)
    return out


def _listing(rows: Sequence[tuple[str, str]]) -> str:
    lines = [f"  {p}: {r}" for p, r in rows[:_SHOW]]
    if len(rows) > _SHOW:
        lines.append(f"  ... and {len(rows) - _SHOW} more")
    return "\n".join(lines)


# ---- image files ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageInfo:
    """What the scan learnt about one decodable image file."""

    path: str
    mode: str  # PIL mode as stored (L, RGB, RGBA, P, I;16 ...)
    width: int
    height: int
    transparency: bool  # palette image with a transparency entry


def inspect_image(path: Path) -> ImageInfo:
    """Decode the whole file (truncation only shows when pixels are read) and describe it."""
    img = decode_image(path)
    return ImageInfo(str(path), img.mode, img.width, img.height, "transparency" in img.info)


def scan_images(paths: Sequence[str | Path], on_bad_file: OnBadFile,
                skipped: list[tuple[str, str]]) -> list[ImageInfo | None]:
    """Decode every image once; bad files follow ``on_bad_file`` (see :func:`check_files`)."""
    return check_files(paths, inspect_image, on_bad_file, skipped, "image")


def majority_channels(infos: Sequence[ImageInfo]) -> Channels:
    """``rgb`` when most images are stored in colour, else ``gray``; logs the evidence if mixed."""
    kinds = Counter(image_channels(i.mode) for i in infos)
    chosen: Channels = "rgb" if kinds["rgb"] > kinds["gray"] else "gray"
    if len(kinds) > 1:
        log.warning("images are mixed: %d gray, %d colour; using channels: %s (set "
                    "data.init_args.channels to choose)", kinds["gray"], kinds["rgb"], chosen)
    return chosen


def describe_images(infos: Sequence[ImageInfo], channels: Channels,
                    image_size: int | Sequence[int]) -> dict[str, int]:
    """Warn in one line what channel conversions were made, and about far-too-small images.

    Returns:
        Conversion note -> number of images it applies to (empty when all are used as stored).
    """
    notes = Counter(n for i in infos if (n := conversion_note(i.mode, channels, i.transparency)))
    if notes:  # a warning: the CLI shows warnings only, and the user's pixels were changed
        log.warning("converted to channels: %s: %s", channels,
                 "; ".join(f"{count} image(s) {note}" for note, count in sorted(notes.items())))
    h, w = image_hw(image_size)
    min_h, min_w = max(1, round(h * SMALL_IMAGE_SHARE)), max(1, round(w * SMALL_IMAGE_SHARE))
    small = [i for i in infos if i.height < min_h or i.width < min_w]
    if small:
        names = ", ".join(f"{i.path} ({i.width}x{i.height})" for i in small[:_SHOW])
        more = f" and {len(small) - _SHOW} more" if len(small) > _SHOW else ""
        log.warning("%d image(s) are far smaller than image_size %s (under %dx%d) and will be "
                    "upscaled: %s%s; check they are real samples, not thumbnails or placeholders",
                    len(small), list(image_hw(image_size)), min_w, min_h, names, more)
    return dict(notes)
