"""Checkpoint callbacks: the task's default (best on its monitored metric + last), or the user's."""

from __future__ import annotations

from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

LAST = "last"


def _is_lightning_default(callback: ModelCheckpoint) -> bool:
    """Whether ``callback`` is the bare ``ModelCheckpoint()`` the Trainer adds when none is given."""
    bare = ModelCheckpoint()
    return (type(callback) is ModelCheckpoint and callback.state_key == bare.state_key
            and callback.dirpath is None and callback.filename is None
            and not callback.save_last and callback.save_top_k == bare.save_top_k)


def user_checkpoints(trainer: Trainer) -> list[ModelCheckpoint]:
    """ModelCheckpoint callbacks the user configured (YAML ``trainer.callbacks`` or code)."""
    return [c for c in trainer.checkpoint_callbacks if not _is_lightning_default(c)]


def default_checkpoints(trainer: Trainer, monitor: str, mode: str) -> list[Callback]:
    """Our checkpointing unless the user configured their own ``ModelCheckpoint``.

    ``best-*.ckpt`` follows the task's monitored metric; ``last.ckpt`` is rewritten after every
    epoch by a second callback (Lightning >= 2.6 rewrites ``save_last`` only when the best
    checkpoint changed, and resuming needs the latest state).
    """
    if user_checkpoints(trainer):
        return []
    return [
        ModelCheckpoint(monitor=monitor, mode=mode, filename="best-{epoch}-{step}"),
        ModelCheckpoint(filename=LAST, monitor=None, save_top_k=1, enable_version_counter=False),
    ]
