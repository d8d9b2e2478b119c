"""Export, last step: publish a finished bundle folder atomically, and clean up after kills.

An export writes into a temporary folder ``.NAME.partial-*`` next to ``NAME`` and renames it into
place only when all of it succeeded (:func:`_publish`). SIGTERM removes the temporary folder
(:class:`_SigtermGuard`); one left by a killed export (SIGKILL, power loss) is removed by the next
export into the same folder once it is provably abandoned (:func:`clean_stale_partials`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from core.atomic import shareable
from core.bundle import LAUNCHER, METADATA, MODEL, PREDICTOR, REQUIREMENTS
from core.errors import DataError

# The export's one logger, named as before the split so that log filters keep working.
log = logging.getLogger("core.export")

# Files of a bundle besides those core.bundle names.
CHECKPOINT_COPY = "model.ckpt"
CARD = "README.md"
# Marks a temporary export folder as ours while it is being written (removed before sealing).
OWNER = ".export-owner.json"
OWNER_TOOL = "convnext-domains export"
# A temporary folder nobody touched for this long is abandoned even if its owner is unknown;
# an export takes minutes, so a live one is never this old.
STALE_AFTER_S = 24 * 3600
_PARTIAL_NAME = re.compile(r"^\..+\.partial-[A-Za-z0-9_]+$")


def write_owner(folder: Path) -> None:
    """Mark ``folder`` as this process's temporary export folder (see :func:`_stale_reason`)."""
    # Lets a later export tell this folder, if a kill leaves it, from a live one.
    (folder / OWNER).write_text(json.dumps({
        "tool": OWNER_TOOL, "pid": os.getpid(), "host": socket.gethostname(),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}))


def make_shareable(folder: Path) -> None:
    """Give ``folder`` and its subfolders the umask's permissions instead of mkdtemp's 0700."""
    for sub in [folder, *(p for p in folder.rglob("*") if p.is_dir())]:
        shareable(sub)


class ExportInterrupted(BaseException):
    """SIGTERM arrived during an export (a BaseException, like KeyboardInterrupt for SIGINT)."""

    def __init__(self, published: Path | None = None) -> None:
        super().__init__("export interrupted by SIGTERM")
        self.published = published


class _SigtermGuard:
    """While active, SIGTERM raises :class:`ExportInterrupted` so the temporary folder is removed.

    Inside :meth:`deferred` (the final renames) the signal waits until the block is done: a
    rename pair cut in the middle would lose the previous bundle.
    """

    def __init__(self) -> None:
        self.previous: Any = None
        self.installed = False
        self.deferring = False
        self.pending = False
        self.fired = False

    def _handle(self, signum: int, frame: Any) -> None:
        # Once raised, a repeated SIGTERM must not cut short the removal it started.
        if self.deferring or self.fired:
            self.pending = True
            return
        self.fired = True
        raise ExportInterrupted()

    def __enter__(self) -> _SigtermGuard:
        # Handlers can only be set from the main thread; elsewhere SIGTERM keeps its meaning.
        if hasattr(signal, "SIGTERM") and threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, self._handle)
            self.installed = True
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.installed:
            signal.signal(signal.SIGTERM, self.previous if self.previous is not None else signal.SIG_DFL)

    @contextlib.contextmanager
    def deferred(self, published: Path) -> Iterator[None]:
        self.deferring = True
        try:
            yield
        finally:
            self.deferring = False
        if self.pending:
            raise ExportInterrupted(published)


def _pid_running(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (True when that cannot be told)."""
    if os.name != "posix" or pid <= 0:
        return True  # os.kill(pid, 0) is no probe on Windows: it would end the process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # exists but belongs to another user, or not a pid at all
    return True


def _newest_mtime(folder: Path) -> float:
    times = [folder.stat().st_mtime]
    times += [p.lstat().st_mtime for p in folder.rglob("*")]
    return max(times)


def _stale_reason(folder: Path, now: float) -> str | None:
    """Why ``folder`` (named like our temporary export folders) is an abandoned export of ours,
    or None when that is not certain (then it is kept)."""
    try:
        owner = json.loads((folder / OWNER).read_text())
    except FileNotFoundError:
        owner = None
    except (OSError, ValueError):
        return None
    if owner is not None:
        if not isinstance(owner, dict) or owner.get("tool") != OWNER_TOOL:
            return None
        pid = owner.get("pid")
        if owner.get("host") == socket.gethostname() and isinstance(pid, int) and not _pid_running(pid):
            return f"its process {pid} is no longer running"
    else:
        # Left by an export from before owner files: ours only if it holds bundle files alone.
        known = {MODEL, METADATA, CARD, CHECKPOINT_COPY, LAUNCHER, REQUIREMENTS, PREDICTOR}
        if any(p.name not in known for p in folder.iterdir()):
            return None
    age = now - _newest_mtime(folder)
    return f"untouched for {age / 3600:.0f} hours" if age > STALE_AFTER_S else None


def clean_stale_partials(parent: Path) -> list[Path]:
    """Remove abandoned temporary export folders (``.NAME.partial-*``) in ``parent``.

    A folder is removed only when it is provably ours and abandoned: its owner file names a
    process of this machine that no longer runs, or nothing in it changed for
    :data:`STALE_AFTER_S`. A concurrent export's folder is kept. Returns the removed folders.
    """
    removed = []
    if not parent.is_dir():
        return removed
    now = time.time()
    for folder in sorted(parent.iterdir()):
        if not _PARTIAL_NAME.match(folder.name) or folder.is_symlink() or not folder.is_dir():
            continue
        try:
            reason = _stale_reason(folder, now)
            if reason is None:
                continue
            size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
            shutil.rmtree(folder)
        except OSError as err:  # vanished meanwhile, or not ours to delete: leave it
            log.debug("kept %s: %s", folder, err)
            continue
        log.warning("removed '%s', left by an interrupted export: %s (%.1f MB)", folder, reason,
                    size / 1e6)
        removed.append(folder)
    return removed

def _check_target(out: Path, overwrite: bool) -> None:
    if not (out.exists() or out.is_symlink()):
        return
    if not overwrite:
        raise DataError(f"'{out}' already exists; choose another --out or pass --overwrite")
    # Never delete a folder that is not a bundle: --out ~ --overwrite must not wipe a home.
    if not out.is_dir() or not ((out / METADATA).is_file() or not any(out.iterdir())):
        raise DataError(f"refusing to overwrite '{out}': it is not an export bundle "
                        f"(no {METADATA}); choose another --out")


def _publish(tmp: Path, out: Path, overwrite: bool) -> None:
    """Rename the finished ``tmp`` to ``out``; an old bundle is swapped out, then deleted."""
    _check_target(out, overwrite)
    if not (out.exists() or out.is_symlink()):
        os.replace(tmp, out)
        return
    old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old, out)  # put the previous bundle back
        raise
    shutil.rmtree(old, ignore_errors=True)
