"""``convnext-domains fit|validate|test|predict --config ...``: the LightningCLI entry point."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from core.data import ConvNeXtDataModule
from core.distributed import check_slurm_layout
from core.errors import DataError
from core.progress import progress_settings
from core.resume import LIGHTNING_CKPT_WORDS, plan_resume


def default_precision() -> str:
    """bf16 mixed precision where the GPU supports it; full fp32 on CPU (no fast bf16 there)."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def trainer_defaults() -> dict[str, Any]:
    return {
        "precision": default_precision(),
        "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                   "init_args": {"save_dir": "runs"}},
    }


# Datamodule facts linked into the model's init_args: configs never repeat them.
LINKED_FROM_DATA = ("num_classes", "in_chans", "class_names", "channel_names")


class ConvNeXtCLI(LightningCLI):
    """LightningCLI in subclass mode: any task and datamodule of this project by ``class_path``.

    The datamodule's ``num_classes``, ``in_chans``, ``class_names`` and ``channel_names`` are linked into the
    model so no YAML repeats them. ``fit --ckpt_path`` resumes in the checkpoint's own run
    folder; the progress display follows the output (see :func:`core.progress.progress_settings`).
    """

    _extra_callbacks: list[Callback] = []

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand) if self.subcommand else None
        ckpt = config.get("ckpt_path") if config is not None else None
        if ckpt and str(ckpt) not in LIGHTNING_CKPT_WORDS and not Path(ckpt).expanduser().is_file():
            raise DataError(f"checkpoint '{ckpt}' does not exist; give the path of a .ckpt file, "
                            "e.g. runs/<name>/version_N/checkpoints/last.ckpt")
        if config is not None and config.get("trainer") is not None:
            check_slurm_layout(config.trainer.get("devices", "auto"), config.trainer.get("num_nodes", 1))
        if self.subcommand == "fit" and ckpt:
            self._extra_callbacks = plan_resume(ckpt, config.trainer.logger)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        config = self._get(self.config_init, "trainer", default={})
        given = config.get("callbacks") or []
        given = list(given) if isinstance(given, list) else [given]
        enable, shown = progress_settings(config.get("enable_progress_bar"), given, sys.stdout.isatty())
        return super().instantiate_trainer(enable_progress_bar=enable,
                                           callbacks=given + shown + self._extra_callbacks, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for name in LINKED_FROM_DATA:
            parser.link_arguments(f"data.{name}", f"model.init_args.{name}", apply_on="instantiate")


def show_project_logs() -> None:
    """Our INFO lines (split sizes, band roles, skipped files, resumed runs) on stderr, as
    Lightning shows its own; nothing is configured when the application already did."""
    for name in ("core", "domains"):
        logger = logging.getLogger(name)
        if not logger.handlers and not logging.getLogger().handlers:
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)


def run_cli(args: list[str] | None = None, run: bool = True) -> ConvNeXtCLI:
    """Run the LightningCLI with ``args`` (default: ``sys.argv``) and return it.

    With ``run=False`` the CLI only instantiates trainer, model and datamodule (no subcommand
    in ``args``), for scripts that drive several stages with one trainer.
    """
    show_project_logs()
    return ConvNeXtCLI(
        LightningModule,  # our tasks (ConvNeXtTask subclasses) and the FCMAE pretraining task
        ConvNeXtDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        trainer_defaults=trainer_defaults(),
        seed_everything_default=42,
        save_config_kwargs={"overwrite": True},
        args=args,  # None: LightningCLI reads sys.argv itself
        run=run,
    )


def main() -> None:
    """Console-script entry point."""
    run_cli()


if __name__ == "__main__":
    main()
