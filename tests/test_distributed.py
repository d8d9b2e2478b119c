"""Multi-process training (Lightning DDP, gloo on CPU) gives the answer of one process.

The end-to-end test starts two CPU processes through the CLI; the unit tests check the pieces
(evaluation shards without repeats, rank-shared random tile draws, the SLURM pre-flight) with a
simulated world, in one process.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper

import core.distributed as distributed
from core.distributed import check_slurm_layout, eval_sampler
from core.errors import DataError
from domains.agriculture.datamodules import TileDraws
from domains.manufacturing import DefectFolderDataModule

from .conftest import TINY_ARGS, make_defect_folders

ROOT = Path(__file__).resolve().parents[1]
EXE = Path(sys.executable).parent / "convnext-domains"
CONFIG = ROOT / "configs" / "manufacturing" / "folder.yaml"


# ---- evaluation shards ------------------------------------------------------------------------
def test_a_single_process_keeps_the_loaders_own_order():
    assert eval_sampler(list(range(7))) is None


def test_evaluation_shards_cover_every_sample_once(monkeypatch):
    """DistributedSampler would give both ranks 4 of 7 samples (one repeated); ours 4 and 3."""
    shares = []
    for rank in (0, 1):
        monkeypatch.setattr(distributed, "world", lambda rank=rank: (rank, 2))
        shares.append(list(eval_sampler(list(range(7)))))
    assert shares == [[0, 2, 4, 6], [1, 3, 5]]


def test_the_datamodules_evaluation_loaders_use_the_unrepeated_shards(tmp_path, monkeypatch):
    dm = DefectFolderDataModule(root=str(make_defect_folders(tmp_path / "d", per_class=12)),
                                good_class="good", val_fraction=0.3, test_fraction=0.2, image_size=32,
                                batch_size=4, num_workers=0)
    dm.setup("fit")
    monkeypatch.setattr(distributed, "world", lambda: (1, 2))
    val = dm.val_dataloader()
    assert len(dm.splits["val"]) == 7 and list(val.sampler) == [1, 3, 5]
    ids = [i for batch in val for i in batch["id"]]
    assert ids == [dm.source.paths[dm.splits["val"][k]] for k in (1, 3, 5)]
    # Training keeps Lightning's (padded, shuffled) distributed sampler: no evaluation shard.
    assert not isinstance(dm.train_dataloader().sampler, type(val.sampler))


# ---- random scene tiles ----------------------------------------------------------------------
def _draws(seed: int = 7, length: int = 10) -> TileDraws:
    spans = np.array([[5, 3], [1, 1], [8, 8]])
    return TileDraws(np.array([4, 9, 11]), np.array([1.0, 0.0, 3.0]), spans, length, seed)


def test_tile_draws_follow_the_seed_and_the_epoch():
    a, b = _draws(), _draws()
    first = list(a)
    assert first == list(b)  # every rank draws the same list from the same seed
    assert list(a) != first  # the next pass is the next epoch
    a.set_epoch(0)
    assert list(a) == first
    for slot, dc, dr in first:
        assert slot in (4, 11)  # slot 9 has weight 0
        limit = (5, 3) if slot == 4 else (8, 8)
        assert 0 <= dc < limit[0] and 0 <= dr < limit[1]


def test_lightnings_distributed_wrapper_gives_ranks_disjoint_draws():
    """Inside Lightning's wrapper (what DDP puts around a custom sampler) each rank takes its
    share of the same per-epoch list: together the whole list, no draw twice."""
    shares = []
    for rank in (0, 1):
        wrapper = DistributedSamplerWrapper(_draws(length=10), num_replicas=2, rank=rank, shuffle=True, seed=3)
        shares.append(list(wrapper))
    assert len(shares[0]) == len(shares[1]) == 5
    assert sorted(shares[0] + shares[1]) == sorted(_draws(length=10))


# ---- SLURM pre-flight -----------------------------------------------------------------------
def _slurm(monkeypatch, **env):
    for key in list(os.environ):
        if key.startswith("SLURM_"):
            monkeypatch.delenv(key)
    for key, value in {"SLURM_NTASKS": "8", "SLURM_JOB_NAME": "train", **env}.items():
        monkeypatch.setenv(key, value)


def test_a_slurm_job_with_other_tasks_per_node_than_devices_is_refused(monkeypatch):
    _slurm(monkeypatch, SLURM_NTASKS_PER_NODE="4", SLURM_NNODES="2")
    check_slurm_layout(4, 2)  # matches
    with pytest.raises(DataError, match="ntasks-per-node=4.*trainer.devices"):
        check_slurm_layout(2, 2)
    with pytest.raises(DataError, match="nodes=2.*trainer.num_nodes"):
        check_slurm_layout("4", 1)
    check_slurm_layout("auto", 2)  # Lightning counts what SLURM gave


def test_outside_slurm_and_in_interactive_jobs_nothing_is_checked(monkeypatch):
    _slurm(monkeypatch, SLURM_NTASKS_PER_NODE="4", SLURM_JOB_NAME="interactive")
    check_slurm_layout(2, 1)
    for key in list(os.environ):
        if key.startswith("SLURM_"):
            monkeypatch.delenv(key)
    check_slurm_layout(2, 1)


def test_the_cli_refuses_the_mismatch_in_one_line(tmp_path, monkeypatch):
    env = {**os.environ, "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2", "SLURM_NNODES": "1",
           "SLURM_JOB_NAME": "train"}
    result = subprocess.run([str(EXE), "fit", "--config", str(CONFIG), "--trainer.devices=4",
                             "--trainer.accelerator=cpu", f"--data.init_args.root={tmp_path}"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "devices=4" in errors[0] and "--ntasks-per-node" in errors[0]
    assert "Traceback" not in result.stderr


# ---- two real processes -----------------------------------------------------------------------
def _metrics_rows(run: Path) -> list[dict[str, str]]:
    with next(run.rglob("metrics.csv")).open() as f:
        return list(csv.DictReader(f))


def test_two_cpu_processes_train_on_disjoint_shares_and_evaluate_exactly(tmp_path):
    data = make_defect_folders(tmp_path / "defects", per_class=12)  # 12 train, 7 val, 5 test
    probe = tmp_path / "probe"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DDP_PROBE_DIR": str(probe), "OMP_NUM_THREADS": "1"}
    common = ["--config", str(CONFIG), *TINY_ARGS, "--model.init_args.pretrained=false",
              f"--data.init_args.root={data}", "--data.init_args.image_size=32",
              "--data.init_args.batch_size=4", "--data.init_args.num_workers=0",
              "--data.init_args.val_fraction=0.3", "--data.init_args.test_fraction=0.2",
              f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}", "--trainer.accelerator=cpu"]
    ddp = ["--trainer.strategy=ddp", "--trainer.devices=2"]

    fit = subprocess.run([str(EXE), "fit", *common, *ddp, "--trainer.max_epochs=2",
                          "--trainer.callbacks+=tests.ddp_probe.RankProbe"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert fit.returncode == 0, fit.stderr[-3000:]
    seen = [json.loads((probe / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [s["world"] for s in seen] == [2, 2]
    dm = DefectFolderDataModule(root=str(data), good_class="good", val_fraction=0.3, test_fraction=0.2)
    dm.setup("fit")
    paths = np.array(dm.source.paths)
    train, val = set(paths[dm.splits["train"]]), set(paths[dm.splits["val"]])
    for epoch in (0, 1):
        a, b = (s[f"train{epoch}"] for s in seen)
        assert len(a) == len(b) == 6 and not set(a) & set(b) and set(a) | set(b) == train
        a, b = (s[f"val{epoch}"] for s in seen)
        assert sorted(a + b) == sorted(val)  # 7 samples: 4 + 3, none counted twice
    weights = [torch.load(probe / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])

    # The metrics the 2 processes logged after the last epoch equal 1 process on that checkpoint.
    logged = [r for r in _metrics_rows(tmp_path / "runs") if r.get("val/auroc")][-1]
    last = next((tmp_path / "runs").rglob("last.ckpt"))
    single = subprocess.run([str(EXE), "validate", *common, "--trainer.devices=1",
                             f"--ckpt_path={last}", "--trainer.logger.init_args.name=single"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    one = _metrics_rows(tmp_path / "runs" / "single")[-1]
    keys = [k for k in one if k.startswith("val/") and one[k]]
    assert {"val/loss", "val/auroc", "val/acc"} <= set(keys)
    for key in keys:
        assert float(logged[key]) == pytest.approx(float(one[key]), abs=1e-6), key

    # Predict with 2 processes: one predictions.csv, every test image once, in the split's order.
    pred = subprocess.run([str(EXE), "predict", *common, *ddp, f"--ckpt_path={last}",
                           "--trainer.logger.init_args.name=predict"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert pred.returncode == 0, pred.stderr[-3000:]
    files = list((tmp_path / "runs" / "predict").rglob("predictions.csv"))
    assert len(files) == 1
    with files[0].open() as f:
        ids = [row["id"] for row in csv.DictReader(f)]
    assert ids == list(paths[dm.splits["test"]])


def test_outputs_one_process_must_write_whole_refuse_several():
    class Trainer:
        world_size = 2

    with pytest.raises(DataError, match="masks.csv is written by one process.*--trainer.devices=1"):
        distributed.require_one_process(Trainer(), "masks.csv")
    Trainer.world_size = 1
    distributed.require_one_process(Trainer(), "masks.csv")


def test_dicom_mask_prediction_refuses_several_processes():
    from domains.medical.prediction import SegmentationMaskWriter

    class Trainer:
        world_size = 2

    with pytest.raises(DataError, match="masks.csv is written by one process"):
        SegmentationMaskWriter().on_predict_start(Trainer(), None)


@pytest.mark.parametrize("writer", ["ScenePredictionWriter", "SceneDetectionWriter"])
def test_scene_prediction_refuses_several_processes(writer):
    import domains.agriculture.prediction as prediction

    class Trainer:
        world_size = 2

    with pytest.raises(DataError, match="scene's .* is written by one process"):
        getattr(prediction, writer)().on_predict_start(Trainer(), None)

