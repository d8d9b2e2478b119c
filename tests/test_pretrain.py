"""FCMAE pretraining: the masked encoder, the loss, the CLI and what data it may see."""

import numpy as np
import pytest
import torch
from lightning.pytorch import Callback
from safetensors.torch import load_file

from core.backbone import ConvNeXtBackbone
from core.classification import ClassificationTask
from core.entry import main as entry_main
from core.fcmae import FCMAE, patchify, random_patch_mask, unpatchify
from core.pretrain import RECONSTRUCTIONS_FILE, WEIGHTS_FILE, FCMAETask
from domains.manufacturing import DefectFolderDataModule

from .config_runs import ROOT
from .conftest import TINY, TINY_ARGS, cpu_trainer, make_defect_folders
from .test_manufacturing_configs import elpv_data


def _fcmae(chans, backbone="convnext_atto", **kwargs):
    torch.manual_seed(0)
    arch = {**TINY, "backbone": backbone}
    return FCMAE(ConvNeXtBackbone(**arch, in_chans=chans, num_classes=0), chans, **kwargs)


def _smooth_images(n, chans, size=64, seed=0):
    """Low-frequency patterns: masked patches are predictable from their neighbours."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(n, chans, 4, 4, generator=g)
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)


def test_patchify_round_trip_and_exact_mask_ratio():
    x = torch.randn(2, 3, 64, 96)
    assert torch.equal(unpatchify(patchify(x, 32), 32, 3, (2, 3)), x)
    mask = random_patch_mask(5, (4, 5), 0.6, torch.Generator().manual_seed(1))
    assert mask.sum(dim=(1, 2)).tolist() == [12.0] * 5  # round(0.6 * 20) per image


@pytest.mark.parametrize("backbone", ["convnext_atto", "convnextv2_atto"])  # v2: GRN blocks
def test_encoder_never_sees_masked_pixels(backbone):
    model = _fcmae(3, backbone).eval()
    images = torch.randn(2, 3, 64, 64)
    mask = random_patch_mask(2, (2, 2), 0.5, torch.Generator().manual_seed(0))
    changed = images.clone()
    hidden = torch.nn.functional.interpolate(mask.unsqueeze(1), size=(64, 64)).bool().expand_as(images)
    changed[hidden] = 100.0  # rewrite only the masked patches
    with torch.no_grad():
        assert torch.equal(model.encode(images, mask), model.encode(changed, mask))


def test_loss_counts_masked_patches_only():
    model = _fcmae(1, norm_pix_loss=False)
    images = torch.zeros(1, 1, 64, 64)
    mask = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    pred = torch.zeros(1, 4, 32 * 32)
    pred[0, 1:] = 5.0  # wrong everywhere except in the one masked patch
    assert float(model.loss(images, pred, mask)) == 0.0
    pred[0, 0] = 2.0  # now wrong on the masked patch: mean squared error 4
    assert float(model.loss(images, pred, mask)) == pytest.approx(4.0)


@pytest.mark.parametrize("chans", [1, 3, 6])
def test_a_few_steps_lower_the_reconstruction_loss_on_a_fixed_batch(chans):
    model = _fcmae(chans, decoder_dim=32)
    images = _smooth_images(4, chans)
    fixed = random_patch_mask(4, (2, 2), 0.5, torch.Generator().manual_seed(3))
    with torch.no_grad():
        before = float(model.eval()(images, fixed)[0])
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(100):
        loss = model(images)[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = float(model.eval()(images, fixed)[0])
    assert after < 0.9 * before


class SeenIds(Callback):
    def __init__(self):
        self.ids = set()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.ids.update(batch["id"])


def test_pretraining_sees_only_the_training_split(tmp_path):
    dm = DefectFolderDataModule(root=str(make_defect_folders(tmp_path / "d", per_class=10)),
                                image_size=32, batch_size=4, num_workers=0,
                                val_fraction=0.2, test_fraction=0.2)
    task = FCMAETask(**TINY, in_chans=1, decoder_dim=16, reconstructions=2)
    seen = SeenIds()
    cpu_trainer(tmp_path, max_epochs=2, callbacks=[seen], limit_val_batches=0).fit(task, datamodule=dm)
    ids = {split: {dm.source.ids[i] for i in dm.splits[split]} for split in ("train", "val", "test")}
    assert ids["val"] and ids["test"]
    assert seen.ids == ids["train"]
    assert not seen.ids & (ids["val"] | ids["test"])


def test_pretrain_command_writes_weights_that_fine_tuning_loads(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    elpv_data(tmp_path, monkeypatch)
    entry_main(["pretrain", "--config", str(ROOT / "configs" / "manufacturing" / "elpv_pretrain.yaml"),
                *TINY_ARGS, "--model.init_args.decoder_dim=16", "--data.init_args.image_size=32",
                "--data.init_args.batch_size=8", "--data.init_args.num_workers=0",
                "--trainer.max_epochs=2", f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}"])
    run = next((tmp_path / "runs").rglob(WEIGHTS_FILE)).parent
    # The epoch line shows the loss once: it is both the training loss and the monitored value.
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("epoch ")]
    assert len(lines) == 2 and all(ln.count("train/loss") == 1 and "best " in ln for ln in lines)
    assert (run / RECONSTRUCTIONS_FILE).stat().st_size > 0
    saved = load_file(str(run / WEIGHTS_FILE))
    assert "stem.0.weight" in saved and saved["stem.0.weight"].shape[1] == 1
    task = ClassificationTask(**TINY, in_chans=1, num_classes=2, pretrained=str(run / WEIGHTS_FILE))
    state = task.backbone.model.state_dict()
    for key in ("stem.0.weight", "stages.3.blocks.0.conv_dw.weight"):
        assert torch.equal(state[key], saved[key])
    # Pretrained weights switch on the recipe's layer decay, as ImageNet weights do.
    assert task.effective_layer_decay == 0.8
    assert np.isfinite(saved["stages.0.blocks.0.mlp.fc1.weight"].numpy()).all()


def test_input_size_must_fit_the_patch_size(tmp_path):
    dm = DefectFolderDataModule(root=str(make_defect_folders(tmp_path / "d", per_class=6)),
                                image_size=48, batch_size=4, num_workers=0)
    task = FCMAETask(**TINY, in_chans=1, decoder_dim=16)
    from core.errors import DataError

    with pytest.raises(DataError, match="not a multiple of patch_size 32.*image_size"):
        cpu_trainer(tmp_path, max_epochs=1, limit_val_batches=0).fit(task, datamodule=dm)


def _unlabelled(folder, n, rng_seed=5):
    """Extra cells as another tool leaves them: RGBA PNGs and a stray text file beside them."""
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(rng_seed)
    for i in range(n):
        rgba = np.concatenate([rng.integers(0, 255, (40, 40, 3)), np.full((40, 40, 1), 255)], axis=2)
        Image.fromarray(rgba.astype(np.uint8), "RGBA").save(folder / f"extra_{i}.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_unlabelled_folder_joins_the_training_split_for_pretraining_only(tmp_path, caplog):
    extra = _unlabelled(tmp_path / "extra", 5)
    dm = DefectFolderDataModule(root=str(make_defect_folders(tmp_path / "d", per_class=10)),
                                image_size=32, batch_size=4, num_workers=0, val_fraction=0.2,
                                test_fraction=0.2, unlabelled_paths=[str(extra)])
    seen = SeenIds()
    cpu_trainer(tmp_path, max_epochs=1, callbacks=[seen], limit_val_batches=0).fit(
        FCMAETask(**TINY, in_chans=1, decoder_dim=16, reconstructions=0), datamodule=dm)
    ids = {split: {dm.source.ids[i] for i in dm.splits[split]} for split in ("train", "val", "test")}
    extra_ids = {str(p) for p in sorted(extra.glob("*.png"))}
    assert seen.ids == ids["train"] | extra_ids
    assert not seen.ids & (ids["val"] | ids["test"])

    # A supervised task on the same datamodule trains on the labelled split only, and says so.
    seen = SeenIds()
    with caplog.at_level("WARNING"):
        cpu_trainer(tmp_path, max_epochs=1, callbacks=[seen], limit_val_batches=0).fit(
            ClassificationTask(**TINY, in_chans=1, num_classes=2, class_names=dm.class_names), datamodule=dm)
    assert seen.ids == ids["train"]
    assert "unlabelled_paths (1 entries) are ignored" in caplog.text


def test_unlabelled_paths_may_not_hold_evaluation_images(tmp_path):
    from core.errors import DataError

    root = make_defect_folders(tmp_path / "d", per_class=10)
    dm = DefectFolderDataModule(root=str(root), image_size=32, batch_size=4, num_workers=0,
                                val_fraction=0.2, test_fraction=0.2, unlabelled_paths=[str(root)])
    with pytest.raises(DataError, match="unlabelled_paths include .* validation/test image"):
        cpu_trainer(tmp_path, max_epochs=1, limit_val_batches=0).fit(
            FCMAETask(**TINY, in_chans=1, decoder_dim=16, reconstructions=0), datamodule=dm)
