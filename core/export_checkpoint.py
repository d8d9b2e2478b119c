"""Export, step 1: read a convnext-domains checkpoint and rebuild its task with the trained weights.

The checkpoint carries ``task_class``, ``hyper_parameters``, ``state_dict`` and the input
contract (``preprocessing``); no pretrained weights file or hub access is needed to rebuild it.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.contracts import CHECKPOINT_SCHEMA_KEY, ContractError, InputContract
from core.errors import DataError
from core.plugins import plugin_of
from core.readers import read_contract


def load_checkpoint(ckpt: str | Path) -> dict[str, Any]:
    """The checkpoint dict, after checking it was written by a convnext-domains task run."""
    path = Path(ckpt).expanduser()
    if not path.is_file():
        raise DataError(f"checkpoint '{path}' does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors come in many types
        raise DataError(f"cannot read checkpoint '{path}': {err}") from err
    missing = [k for k in ("task_class", "preprocessing", "state_dict", "hyper_parameters")
               if not isinstance(checkpoint, dict) or k not in checkpoint]
    if missing:
        raise DataError(
            f"checkpoint '{path}' was not written by a convnext-domains task run (it has no "
            f"{', '.join(missing)}): export the checkpoint of a `convnext-domains fit` run with "
            "this version, e.g. runs/<name>/version_N/checkpoints/best-*.ckpt"
        )
    return checkpoint


def rebuild_task(checkpoint: dict[str, Any], source: str | Path = "checkpoint") -> nn.Module:
    """The task of ``checkpoint`` with its trained weights, in eval mode.

    ``pretrained`` is forced to ``False``: the state dict already holds every weight, and the
    original weights file or the hub may not be reachable where the export runs.
    """
    module_name, _, class_name = str(checkpoint["task_class"]).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except ModuleNotFoundError as err:
        plugin = plugin_of(str(checkpoint["task_class"]))
        fix = (f"install its domain's packages: {plugin.install_hint()}" if plugin is not None
               else "install the package that provides it")
        raise DataError(f"checkpoint '{source}' needs {checkpoint['task_class']}, which cannot be "
                        f"imported ({err}); {fix}") from err
    except AttributeError as err:
        raise DataError(f"checkpoint '{source}' names task class {checkpoint['task_class']}, "
                        "which this convnext-domains does not have") from err
    # LightningCLI adds bookkeeping entries (_class_path, _instantiator) that are no arguments.
    hparams = {k: v for k, v in checkpoint["hyper_parameters"].items() if not k.startswith("_")}
    hparams["pretrained"] = False
    try:
        task = cls(**hparams)
        task.load_state_dict(checkpoint["state_dict"], strict=True)
    except (TypeError, RuntimeError, ValueError) as err:
        raise DataError(f"cannot rebuild {checkpoint['task_class']} from '{source}' ({err}); was "
                        "it written by another convnext-domains version?") from err
    return task.eval()


def checkpoint_contract(checkpoint: dict[str, Any], source: str | Path = "checkpoint") -> InputContract:
    """The typed input contract of a checkpoint (schema 1.0 when it records no version)."""
    version = str(checkpoint.get(CHECKPOINT_SCHEMA_KEY, "1.0"))
    try:
        return read_contract(checkpoint["preprocessing"], version)
    except ContractError as err:
        raise DataError(f"checkpoint '{source}': {err}") from err


def input_shape(contract: InputContract, in_chans: int) -> tuple[int, int, int]:
    """``(C, H, W)`` of one network input, after checking the contract against the model."""
    if contract.in_chans != int(in_chans):
        raise DataError(f"the checkpoint's input contract gives {contract.in_chans} input channels "
                        f"but the model was built for {in_chans}")
    return contract.network_shape


def task_kind(task: nn.Module) -> str:
    """``detection``, ``segmentation``, ``multilabel`` or ``classification``."""
    from core.detection import DetectionTask
    from core.segmentation import SegmentationTask

    if isinstance(task, DetectionTask):
        return "detection"
    if isinstance(task, SegmentationTask):
        return "segmentation"
    return "multilabel" if getattr(task, "multilabel", False) else "classification"
