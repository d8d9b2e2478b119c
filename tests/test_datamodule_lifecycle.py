"""The base datamodule owns the lifecycle: one abstract hook builds the source, once; subclasses
never write the base's private state."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
from lightning.pytorch import LightningDataModule

from core.cli import run_cli
from core.data import ArraySource, ConvNeXtDataModule, DataError, SampleSource

from .conftest import TINY_ARGS

ROOT = Path(__file__).resolve().parents[1]


class CountingDataModule(ConvNeXtDataModule):
    """Twelve random 3-channel images in two classes; counts how often its source is built."""

    builds = 0

    def build_source(self) -> SampleSource:
        type(self).builds += 1
        rng = np.random.default_rng(0)
        images = rng.integers(0, 255, (12, 20, 20, 3), dtype=np.uint8)
        return ArraySource(images, np.arange(12) % 2, [f"s{i}" for i in range(12)],
                           class_names=["even", "odd"], channel_names=["red", "green", "blue"])


@pytest.fixture(autouse=True)
def _reset_count():
    CountingDataModule.builds = 0


def test_the_base_is_abstract_in_build_source():
    class Forgetful(ConvNeXtDataModule):
        pass

    with pytest.raises(TypeError, match="abstract method.*build_source"):
        Forgetful()


def test_the_source_is_built_once_for_linking_setup_and_loaders():
    dm = CountingDataModule(image_size=16, batch_size=4, val_fraction=0.25, test_fraction=0.25)
    # What LightningCLI links into the model, read before any setup.
    assert dm.class_names == ["even", "odd"] and dm.num_classes == 2
    assert dm.in_chans == 3 and dm.channel_names == ["red", "green", "blue"]
    dm.setup("fit")
    dm.setup("validate")  # Lightning calls setup per stage: the splits stay the same
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 16, 16)
    assert next(iter(dm.val_dataloader()))["image"].shape[1] == 3
    assert dm.split_sizes() == {"train": 6, "val": 3, "test": 3}
    assert CountingDataModule.builds == 1


def test_linking_through_the_cli_builds_the_source_once():
    cli = run_cli(["--model=core.classification.ClassificationTask", *TINY_ARGS,
                   "--model.init_args.pretrained=false",
                   f"--data={__name__}.CountingDataModule", "--data.init_args.image_size=16",
                   "--trainer.logger=false"], run=False)
    h = cli.model.hparams
    assert (h.class_names, h.num_classes, h.in_chans) == (["even", "odd"], 2, 3)
    assert list(h.channel_names) == ["red", "green", "blue"]
    cli.datamodule.setup("fit")
    assert len(cli.datamodule.splits["train"]) > 0
    assert CountingDataModule.builds == 1


def test_the_splits_are_drawn_once_through_the_refine_hook():
    calls = []

    class Refining(CountingDataModule):
        def refine_splits(self, splits):
            calls.append(sorted(splits))
            return {**splits, "test": splits["test"][:1]}

    dm = Refining(val_fraction=0.25, test_fraction=0.25)
    dm.setup("fit")
    dm.setup("test")
    assert calls == [["test", "train", "val"]] and len(dm.splits["test"]) == 1


def test_per_sample_facts_of_the_source_drive_the_split():
    class Given(CountingDataModule):
        def build_source(self) -> SampleSource:
            source = super().build_source()
            return ArraySource(source.images, source.labels, source.ids, class_names=["even", "odd"],
                               split=["train"] * 8 + ["val"] * 2 + ["test"] * 2)

    dm = Given()
    assert dm.splits["val"].tolist() == [8, 9] and dm.splits["test"].tolist() == [10, 11]
    assert dm.channel_names is None and dm.in_chans == 3  # read from the first image


@pytest.mark.parametrize(("returned", "error", "message"), [
    (lambda: ["not", "a", "source"], TypeError, r"Bad\.build_source returned a list, expected a SampleSource"),
    (lambda: ArraySource(np.zeros((0, 4, 4)), np.zeros(0), [], class_names=["a", "b"]), DataError,
     r"Bad\.build_source found no samples"),
    (lambda: ArraySource(np.zeros((2, 4, 4)), np.zeros(2), ["a", "b"]), ValueError,
     r"Bad\.build_source returned a source without class_names"),
])
def test_a_wrong_source_is_refused_naming_the_hook(returned, error, message):
    class Bad(ConvNeXtDataModule):
        def build_source(self):
            return returned()

    with pytest.raises(error, match=message):
        _ = Bad().class_names


def _base_private_attributes() -> set[str]:
    """Private attributes the base sets beyond Lightning's own."""
    lightning = set(vars(LightningDataModule()))
    return {name for name in vars(CountingDataModule()) if name.startswith("_") and name not in lightning}


def test_no_domain_datamodule_writes_the_base_private_state():
    private = _base_private_attributes()
    assert {"_source", "_splits", "_in_chans"} <= private
    offenders = []
    for module in sorted((ROOT / "domains").rglob("*.py")):
        for node in ast.walk(ast.parse(module.read_text())):
            targets = node.targets if isinstance(node, ast.Assign) else (
                [node.target] if isinstance(node, ast.AugAssign | ast.AnnAssign) else [])
            for target in targets:
                if (isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name)
                        and target.value.id == "self" and target.attr in private):
                    offenders.append(f"{module.relative_to(ROOT)}:{node.lineno} self.{target.attr}")
    assert offenders == []
