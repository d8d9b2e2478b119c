"""Outputs appear complete or not at all: written under a temporary name, then renamed."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def shareable(path: Path) -> None:
    """Give ``path`` the permissions a plain ``open``/``mkdir`` would have (the umask's), not
    the owner-only 0600/0700 of ``mkstemp``/``mkdtemp``: outputs are meant to be shared."""
    path.chmod((0o777 if path.is_dir() else 0o666) & ~_umask())


def write_atomic(path: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` for a hidden temporary file beside ``path``, then rename it to ``path``.

    A crash or kill never leaves a truncated ``path``. The temporary name keeps the suffix, so
    writers that pick a format from it (PIL) still do, and is unique per call.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.stem}.partial-", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        shareable(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_tree_atomic(root: Path, files: Mapping[str, bytes], label: str) -> list[Path]:
    """Write ``files`` (``/``-separated paths relative to ``root`` -> contents), none of which
    may exist yet, so that each new top-level entry appears complete or not at all.

    Everything is written into a hidden temporary folder ``.{label}.partial-*`` in ``root``
    (the same file system, so the moves are renames); then each topmost path that does not
    exist yet (``domains/retail/``, ``tests/test_retail.py``) is renamed into place. An error or
    interrupt removes the temporary folder and whatever was already moved. Returns the paths
    moved into place.
    """
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{label}.partial-", dir=root))
    moved: list[Path] = []
    try:
        for relative, data in files.items():
            path = staging / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        for unit in _new_tops(root, files):
            if (root / unit).exists():  # appeared since the caller checked
                raise FileExistsError(f"{root / unit} already exists")
            os.rename(staging / unit, root / unit)
            moved.append(root / unit)
        return moved
    except BaseException:
        for path in reversed(moved):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _new_tops(root: Path, files: Mapping[str, bytes]) -> list[str]:
    """The topmost paths of ``files`` that do not exist under ``root``, in order, each once."""
    tops: dict[str, None] = {}
    for relative in files:
        parts = relative.split("/")
        for end in range(1, len(parts) + 1):
            top = "/".join(parts[:end])
            if not (root / top).exists():
                tops[top] = None
                break
    return list(tops)
