"""Tiny CLI runs of the shipped configs, shared by the domains' config tests and the CLI tests.

Each domain's ``tests/test_<domain>_configs.py`` maps the datamodules its configs use to tiny
synthetic data (``SYNTHETIC_DATA``: class name -> function of ``(tmp_path, monkeypatch)`` that
writes the data and returns the CLI arguments pointing at it). A domain cloned with
``new-domain`` gets its own copy, so its configs run on its own synthetic data.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from .conftest import TINY_ARGS

ROOT = Path(__file__).resolve().parents[1]
SyntheticData = Callable[[Path, pytest.MonkeyPatch], list[str]]


def domain_configs(domain: str) -> list[Path]:
    """The configs shipped for ``domain`` (``configs/<domain>/*.yaml``)."""
    return sorted((ROOT / "configs" / domain).glob("*.yaml"))


def config_id(config: Path) -> str:
    """A config as a test id: its path in the checkout."""
    return config.relative_to(ROOT).as_posix()


def synthetic_data_of(config: Path) -> dict[str, SyntheticData]:
    """The ``SYNTHETIC_DATA`` of the config's domain (``tests/test_<domain>_configs.py``)."""
    return importlib.import_module(f"tests.test_{config.parent.name}_configs").SYNTHETIC_DATA


def tiny_args(config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """CLI arguments that run ``config`` with a tiny backbone on tiny synthetic data."""
    data_class = yaml.safe_load(config.read_text())["data"]["class_path"].rsplit(".", 1)[-1]
    synthetic = synthetic_data_of(config)
    assert data_class in synthetic, (f"add synthetic data for {data_class} (used by {config}) to "
                                     f"tests/test_{config.parent.name}_configs.py")
    return [
        # No config's weights fit the tiny architecture: train from scratch, whatever it names.
        "--config", str(config), *TINY_ARGS, "--model.init_args.pretrained=false",
        "--data.init_args.image_size=32", "--data.init_args.batch_size=4",
        "--data.init_args.num_workers=0",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
        f"--trainer.default_root_dir={tmp_path / 'runs'}",
        *synthetic[data_class](tmp_path, monkeypatch),
    ]


def fast_dev_run(config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """``fit --trainer.fast_dev_run=true`` of ``config`` on tiny data; returns the LightningCLI."""
    from core.cli import run_cli

    monkeypatch.chdir(tmp_path)
    return run_cli(["fit", *tiny_args(config, tmp_path, monkeypatch), "--trainer.fast_dev_run=true"])


def assert_one_linked_step(cli) -> None:
    """The run finished one step, with the model sized from the datamodule (never from YAML)."""
    assert cli.trainer.state.finished
    assert cli.trainer.global_step == 1
    assert cli.model.hparams.num_classes == cli.datamodule.num_classes
    assert cli.model.hparams.class_names == cli.datamodule.class_names
