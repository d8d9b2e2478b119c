"""Multi-process runs (Lightning DDP): exact evaluation shards, gathered results, a SLURM check.

Lightning shards every dataloader with ``DistributedSampler``, which pads the evaluation splits
with repeated samples so that all ranks get the same count; metrics would then count those
samples twice. Our evaluation loaders therefore carry :func:`eval_sampler` (no repeats; Lightning
keeps a sampler that already is distributed). Training keeps Lightning's sampler (or its wrapper
around ours), which every rank must step through equally often.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch.distributed as dist
from torch.utils.data import Dataset, Sampler

from core.errors import DataError


def world() -> tuple[int, int]:
    """``(rank, world size)`` of the process group; ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def eval_sampler(dataset: Dataset) -> Sampler | None:
    """A rank's share of an evaluation split, in order and without repeated samples (ranks may
    differ by one sample); None in a single process (the loader keeps its sequential order)."""
    rank, size = world()
    if size == 1:
        return None
    from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

    return UnrepeatedDistributedSampler(dataset, num_replicas=size, rank=rank, shuffle=False)


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` in rank order (``[obj]`` in a single process). All ranks must call it."""
    rank, size = world()
    if size == 1:
        return [obj]
    gathered: list[Any] = [None] * size
    dist.all_gather_object(gathered, obj)
    return gathered


def check_slurm_layout(devices: Any, num_nodes: int) -> None:
    """Refuse, in one line, a SLURM batch job whose tasks do not match ``devices`` x ``num_nodes``.

    Lightning's own check (``SLURMEnvironment.validate_settings``) runs only once the trainer
    launches, as a traceback; with ``--ntasks-per-node`` different from ``trainer.devices`` (or
    ``--nodes`` from ``trainer.num_nodes``) the ranks would otherwise wait for peers that never
    come. This asks Lightning the same question before anything is built.
    """
    from lightning.fabric.plugins.environments import SLURMEnvironment

    if not SLURMEnvironment.detect():
        return  # not a SLURM batch job (or an interactive one): Lightning launches the processes
    if isinstance(devices, str) and not devices.isdigit():
        return  # "auto" / "-1": Lightning counts what SLURM gave
    count = len(devices) if isinstance(devices, list | tuple) else int(devices)
    try:
        SLURMEnvironment().validate_settings(num_devices=count, num_nodes=int(num_nodes))
    except (ValueError, RuntimeError) as err:
        raise DataError(f"the SLURM allocation does not match the trainer: {err} Set #SBATCH "
                        "--ntasks-per-node to trainer.devices and #SBATCH --nodes to "
                        "trainer.num_nodes (one task per device)") from err


def rank_zero_dir(trainer: Any) -> Path | None:
    """The run's log directory on rank 0; None on the other ranks, or without a directory.

    Every rank must call it, together: ``Trainer.log_dir`` broadcasts rank 0's folder, and a
    broadcast that only rank 0 makes (``if is_global_zero: trainer.log_dir``) waits forever.
    """
    folder = trainer.log_dir
    if folder is None or not trainer.is_global_zero:
        return None
    return Path(folder)


def require_one_process(trainer: Any, what: str) -> None:
    """Refuse to run ``what`` (an output that one process must write whole, such as a scene
    raster) from several processes, naming the fix."""
    if trainer.world_size > 1:
        raise DataError(f"{what} is written by one process, but this run has {trainer.world_size}; "
                        "run predict with --trainer.devices=1 (and --trainer.num_nodes=1)")
