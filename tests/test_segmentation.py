import json
import math

import pytest
import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.loggers import CSVLogger
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from core.backbone import ConvNeXtBackbone
from core.ema import ParameterEMA
from core.heads import FPNHead, UPerHead, build_head
from core.losses import masked_cross_entropy, soft_dice_loss
from core.segmentation import SegmentationTask

from .conftest import TINY, mean_loss
from .conftest import cpu_trainer as trainer

IGNORE = 255
# Small decoders keep the CPU tests fast; the head is sized from the pyramid either way.
SMALL = {**TINY, "decoder_channels": 16, "drop_path_rate": 0.0}


class MaskDataset(Dataset):
    def __init__(self, images, masks):
        self.images, self.masks = images, masks

    def __len__(self):
        return len(self.masks)

    def __getitem__(self, i):
        return {"image": self.images[i], "mask": self.masks[i], "id": f"tile_{i}"}


def block_data(n=16, size=32, block=8, seed=0):
    """Images of constant-brightness blocks plus noise; class 1 where the block is bright.

    The top rows are unlabelled (``IGNORE``) and hold misleading pixels, as nodata would.
    """
    g = torch.Generator().manual_seed(seed)
    grid = torch.randn(n, 1, size // block, size // block, generator=g)
    images = F.interpolate(grid, scale_factor=block, mode="nearest")
    masks = (images[:, 0] > 0).long()
    images = images + 0.2 * torch.randn(images.shape, generator=g)
    masks[:, :4] = IGNORE
    images[:, :, :4] = 5.0
    return MaskDataset(images, masks)


# ---- heads -------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", [
    TINY,
    {"backbone": "convnext_atto"},
    {"backbone": "convnextv2_atto", "depths": [1, 1, 1, 1], "dims": [12, 24, 48, 96]},
])
@pytest.mark.parametrize("head", ["upernet", "fpn"])
def test_heads_fit_any_backbone_pyramid(arch, head):
    backbone = ConvNeXtBackbone(**arch, in_chans=2)
    decoder = build_head(head, backbone.channels, backbone.strides, num_classes=5, decoder_channels=16)
    assert isinstance(decoder, UPerHead if head == "upernet" else FPNHead)
    x = torch.randn(2, 2, 64, 96)
    with torch.no_grad():
        logits = decoder(backbone.forward_pyramid(x))
    assert logits.shape == (2, 5, 64 // 4, 96 // 4)
    assert decoder.output_stride == backbone.strides[0] == 4
    assert decoder.laterals[0][0].in_channels == backbone.channels[0]


def test_heads_take_any_channel_list_and_reject_bad_pyramids():
    channels, strides = [5, 7, 11, 13], [4, 8, 16, 32]
    feats = [torch.randn(1, c, 64 // s, 64 // s) for c, s in zip(channels, strides, strict=True)]
    for name in ("upernet", "fpn"):
        assert build_head(name, channels, strides, 3, decoder_channels=8)(feats).shape == (1, 3, 16, 16)
    assert UPerHead(channels, strides, 3).ppm.branches[0][1][0].in_channels == 13
    with pytest.raises(ValueError, match="strides must increase"):
        UPerHead(channels, [4, 4, 16, 32], 3)
    with pytest.raises(ValueError, match="unknown segmentation head"):
        build_head("deeplab", channels, strides, 3)


@pytest.mark.parametrize("head", ["upernet", "fpn"])
@pytest.mark.parametrize("size", [(64, 64), (48, 40)])
def test_logits_and_probabilities_at_input_resolution(head, size):
    task = SegmentationTask(**SMALL, head=head, in_chans=3, num_classes=4).eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        logits = task(x)
        probs = task.predict_probs(x)
    assert logits.shape == (2, 4, *size)
    assert probs.dtype == torch.float32
    assert torch.allclose(probs.sum(dim=1), torch.ones(2, *size), atol=1e-5)


@pytest.mark.parametrize("scale,size", [(2, (32, 32)), (3, (13, 11))])
def test_input_scale_runs_on_upsampled_pixels_and_averages_back(scale, size):
    """input_scale s: the network sees each input pixel as an s x s block (nearest), and each
    input pixel's logits are the mean over its block, computed here by hand from a task with
    the same weights and no scaling."""
    torch.manual_seed(0)
    scaled = SegmentationTask(**SMALL, in_chans=2, num_classes=3, input_scale=scale).eval()
    plain = SegmentationTask(**SMALL, in_chans=2, num_classes=3).eval()
    plain.load_state_dict(scaled.state_dict())
    x = torch.randn(2, 2, *size)
    big = x.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)
    with torch.no_grad():
        got = scaled(x)
        dense = plain(big)
    assert got.shape == (2, 3, *size)
    by_hand = dense.reshape(2, 3, size[0], scale, size[1], scale).mean(dim=(3, 5))
    assert torch.allclose(got, by_hand, atol=1e-5)
    # and not the same as running the network on the pixels as they are
    with torch.no_grad():
        assert not torch.allclose(got, plain(x), atol=1e-3)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_input_scale_must_be_a_whole_number_of_at_least_one(bad):
    with pytest.raises(ValueError, match="input_scale must be a whole number >= 1"):
        SegmentationTask(**SMALL, num_classes=2, input_scale=bad)


def test_classifier_head_is_pruned_and_decoder_gets_full_lr(tmp_path):
    task = SegmentationTask(**SMALL, num_classes=3, lr=1e-3, layer_decay=0.5)
    names = dict(task.named_parameters())
    assert not [n for n in names if n.startswith("backbone.model.head.")]
    task.trainer = trainer(tmp_path, max_epochs=1)
    opt = task.configure_optimizers()["optimizer"]
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert all(lr_of[id(p)] == pytest.approx(1e-3) for p in task.decoder.parameters())
    assert lr_of[id(task.backbone.model.stem[0].weight)] < 1e-3
    assert len(lr_of) == len(names)  # every parameter is optimised exactly once
    # A checkpoint of the pruned model loads into a freshly built one.
    SegmentationTask(**SMALL, num_classes=3).load_state_dict(task.state_dict(), strict=True)


def test_frozen_backbone_still_trains_the_decoder(tmp_path):
    task = SegmentationTask(**SMALL, in_chans=1, num_classes=2, freeze_backbone_epochs=1,
                            warmup_epochs=0)
    stem0 = task.backbone.model.stem[0].weight.detach().clone()
    classifier0 = task.decoder.classifier.weight.detach().clone()
    trainer(tmp_path, max_epochs=1).fit(task, DataLoader(block_data(n=4), batch_size=4))
    assert torch.equal(task.backbone.model.stem[0].weight, stem0)
    assert not torch.equal(task.decoder.classifier.weight, classifier0)


# ---- losses and ignore_index -------------------------------------------------------------
def random_case(seed=0, k=3):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, k, 16, 16, generator=g)
    target = torch.randint(0, k, (2, 16, 16), generator=g)
    target[0, :5] = IGNORE
    target[1, :, 10:] = IGNORE
    return logits, target


@pytest.mark.parametrize(("loss", "weights"), [
    ("ce", None), ("dice", None), ("ce+dice", None),
    ("ce", [1.0, 2.0, 0.5]), ("ce+dice", [1.0, 2.0, 0.5]),  # weights apply to cross-entropy only
])
def test_ignored_pixels_do_not_affect_the_loss(loss, weights):
    task = SegmentationTask(**SMALL, num_classes=3, loss=loss, class_weights=weights)
    logits, target = random_case()
    ignored = (target == IGNORE).unsqueeze(1).expand_as(logits)
    changed = logits.clone()
    changed[ignored] = torch.randn(int(ignored.sum())) * 50
    logits.requires_grad_(True)
    base = task.compute_loss(logits, target)
    value = float(base.detach())
    assert torch.isfinite(base) and value > 0
    assert float(task.compute_loss(changed, target)) == pytest.approx(value, rel=1e-6)
    base.backward()
    assert torch.count_nonzero(logits.grad[ignored]) == 0
    # Relabelling ignored pixels to a class does change it: they were really left out.
    relabelled = torch.where(target == IGNORE, 0, target)
    assert float(task.compute_loss(logits.detach(), relabelled)) != pytest.approx(value, rel=1e-4)


def test_masked_cross_entropy_matches_torch_and_all_ignored_batches_give_zero():
    logits, target = random_case()
    weight = torch.tensor([1.0, 2.0, 0.5])
    reference = F.cross_entropy(logits, target, weight=weight, ignore_index=IGNORE)
    assert masked_cross_entropy(logits, target, IGNORE, weight) == pytest.approx(float(reference))
    nothing = torch.full_like(target, IGNORE)
    logits.requires_grad_(True)
    for loss in (masked_cross_entropy(logits, nothing, IGNORE), soft_dice_loss(logits, nothing, IGNORE)):
        assert float(loss.detach()) == 0.0
        loss.backward()  # still part of the graph, so a training step does not crash


def test_dice_is_zero_for_a_perfect_prediction_and_high_for_a_wrong_one():
    _, target = random_case()
    onehot = F.one_hot(target.where(target != IGNORE, 0), 3).permute(0, 3, 1, 2).float()
    assert float(soft_dice_loss(onehot * 40, target, IGNORE)) < 1e-3
    assert float(soft_dice_loss(onehot.roll(1, dims=1) * 40, target, IGNORE)) > 0.95


@pytest.mark.parametrize("loss", ["ce", "dice", "ce+dice"])
def test_a_few_steps_lower_each_loss(tmp_path, loss):
    torch.manual_seed(0)
    data = block_data()
    task = SegmentationTask(**SMALL, head="fpn", in_chans=1, num_classes=2, loss=loss, lr=1e-2,
                            warmup_epochs=0, decoder_dropout=0.0)
    before = mean_loss(task, data)
    assert before == pytest.approx(before) and before > 0  # finite
    trainer(tmp_path, max_epochs=6).fit(task, DataLoader(data, batch_size=8, shuffle=True))
    after = mean_loss(task, data)
    assert after < 0.7 * before


# ---- class weights -----------------------------------------------------------------------
class CountingDataModule(LightningDataModule):
    def __init__(self, counts):
        super().__init__()
        self.counts = counts
        self.data = block_data(n=2)

    def train_dataloader(self):
        return DataLoader(self.data, batch_size=2)

    def train_class_counts(self):
        return self.counts


def test_balanced_class_weights_come_from_the_datamodule_pixel_counts(tmp_path):
    task = SegmentationTask(**SMALL, in_chans=1, num_classes=2, class_weights="balanced")
    # Final shape from construction (EMA copies the model before setup fills it in).
    assert task.class_weight.tolist() == [1.0, 1.0]
    trainer(tmp_path, max_steps=1, callbacks=[ParameterEMA(decay=0.9)]).fit(task, datamodule=CountingDataModule([900, 100]))
    # inverse frequency: total / (K * count)
    assert task.class_weight.tolist() == pytest.approx([1000 / 1800, 1000 / 200])
    assert "class_weight" not in task.state_dict()
    logits, target = random_case(k=2)
    plain = SegmentationTask(**SMALL, in_chans=1, num_classes=2)
    assert float(task.compute_loss(logits, target)) != pytest.approx(float(plain.compute_loss(logits, target)))


def test_invalid_options_are_rejected_with_a_reason():
    with pytest.raises(ValueError, match="class_weights has 3 entries for 2 classes"):
        SegmentationTask(**SMALL, num_classes=2, class_weights=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="is a class index"):
        SegmentationTask(**SMALL, num_classes=3, ignore_index=2)
    with pytest.raises(ValueError, match="cross-entropy"):
        SegmentationTask(**SMALL, num_classes=2, loss="dice", class_weights="balanced")
    with pytest.raises(ValueError, match="unknown loss"):
        SegmentationTask(**SMALL, num_classes=2, loss="focal")


# ---- metrics, report and prediction ------------------------------------------------------
class OracleTask(SegmentationTask):
    """The image holds the logits, so predictions (and hence metrics) are chosen by the data."""

    def forward(self, x):
        return x * 1.0


def oracle_data():
    """Two 4x4 tiles, classes background/crop/weed; labelled pixels and their predictions:

    tile 0: 8 background predicted right, 4 crop predicted right, 4 ignored (predicted weed)
    tile 1: 4 crop predicted right, 4 crop predicted weed, 4 weed predicted right, 4 ignored
    """
    pred = torch.zeros(2, 4, 4, dtype=torch.long)
    mask = torch.zeros(2, 4, 4, dtype=torch.long)
    mask[0, 2] = 1
    pred[0, 2] = 1
    mask[0, 3], pred[0, 3] = IGNORE, 2
    mask[1, 0:2], pred[1, 0] = 1, 1
    pred[1, 1] = 2
    mask[1, 2], pred[1, 2] = 2, 2
    mask[1, 3], pred[1, 3] = IGNORE, 0
    logits = F.one_hot(pred, 3).permute(0, 3, 1, 2).float() * 10
    return MaskDataset(logits, mask)


CONFUSION = [[8, 0, 0], [0, 8, 4], [0, 0, 4]]
IOU = {"background": 1.0, "crop": 8 / 12, "weed": 4 / 8}


def test_ignored_pixels_do_not_affect_metrics():
    task = OracleTask(**SMALL, in_chans=3, num_classes=3, class_names=list(IOU))
    data = oracle_data()
    logits, mask = data.images, data.masks
    scrambled = logits.clone()
    scrambled[(mask == IGNORE).unsqueeze(1).expand_as(logits)] = torch.randn(3 * 8) * 100
    values = []
    for outputs in (logits, scrambled):
        task.update_metrics("val", outputs, mask)
        values.append({k: float(v) for k, v in task.val_metrics.compute().items()})
        task.val_metrics.reset()
    assert values[0] == values[1]
    assert values[0]["val/miou"] == pytest.approx(sum(IOU.values()) / 3)
    assert values[0]["val/acc"] == pytest.approx(20 / 24)
    assert values[0]["val/iou_crop"] == pytest.approx(IOU["crop"])


def test_test_run_writes_metrics_json_with_iou_and_pixel_confusion(tmp_path):
    task = OracleTask(**SMALL, in_chans=3, num_classes=3, class_names=list(IOU))
    t = trainer(tmp_path, logger=CSVLogger(tmp_path))
    results = t.test(task, DataLoader(oracle_data(), batch_size=1))[0]
    assert results["test/miou"] == pytest.approx(sum(IOU.values()) / 3)
    assert results["test/iou_weed"] == pytest.approx(0.5)
    report = json.loads((tmp_path / "lightning_logs" / "version_0" / "metrics.json").read_text())
    assert report["metrics"]["miou"] == pytest.approx(sum(IOU.values()) / 3)
    assert report["per_class_iou"] == pytest.approx(IOU)
    assert report["confusion_matrix"]["counts"] == CONFUSION
    assert report["num_labelled_pixels"] == 24 and report["ignore_index"] == IGNORE
    assert (tmp_path / "lightning_logs" / "version_0" / "confusion_matrix.png").stat().st_size > 0
    assert task.test_confusion.update_count == 0  # reset for the next test run


def test_a_class_absent_from_the_split_has_no_iou_rather_than_zero(tmp_path):
    """A class with no true and no predicted pixel in the split (e.g. a land-cover class that
    only occurs in training blocks) has an undefined IoU: logged as NaN and written as null,
    never 0.0 (which reads as "the model fails on it"); the mean IoU is over the other classes."""
    task = OracleTask(**SMALL, in_chans=4, num_classes=4, class_names=[*IOU, "shrub"])
    data = oracle_data()
    data.images = torch.cat([data.images, torch.zeros_like(data.images[:, :1])], dim=1)
    t = trainer(tmp_path, logger=CSVLogger(tmp_path))
    results = t.test(task, DataLoader(data, batch_size=1))[0]
    assert results["test/miou"] == pytest.approx(sum(IOU.values()) / 3)
    assert results["test/iou_weed"] == pytest.approx(0.5)
    assert math.isnan(results["test/iou_shrub"])
    report = json.loads((tmp_path / "lightning_logs" / "version_0" / "metrics.json").read_text())
    assert report["metrics"]["iou_shrub"] is None and report["per_class_iou"]["shrub"] is None
    assert report["per_class_iou"]["weed"] == pytest.approx(0.5)


def test_predict_step_returns_probabilities_and_ids(tmp_path):
    task = SegmentationTask(**SMALL, in_chans=1, num_classes=3, class_names=["a", "b", "c"])
    out = trainer(tmp_path).predict(task, DataLoader(block_data(n=3), batch_size=2))
    assert [o["id"] for o in out] == [["tile_0", "tile_1"], ["tile_2"]]
    probs = torch.cat([o["probs"] for o in out])
    assert probs.shape == (3, 3, 32, 32) and probs.dtype == torch.float32
    assert probs.device.type == "cpu"
    assert torch.allclose(probs.sum(dim=1), torch.ones(3, 32, 32), atol=1e-5)
    assert out[0]["class_names"] == ["a", "b", "c"]


def test_foreground_dice_is_the_mean_of_per_image_dice():
    from core.segmentation_metrics import ForegroundDice

    target = torch.zeros(2, 8, 8, dtype=torch.long)
    target[0, 2:6, 2:6] = 1  # 16 pixels, predicted exactly: Dice 1
    target[1, 0, 0:4] = 1  # 4 pixels
    preds = target.clone()
    preds[1, 0, 0:2] = 0
    preds[1, 1, 0:2] = 1  # 2 of 4 hit, 2 false positives: Dice 2*2 / (4 + 4) = 0.5
    dice = ForegroundDice(num_classes=2)
    dice.update(preds, target)
    # Per image then averaged: (1 + 0.5) / 2. Pooling all pixels would give 36 / 40 = 0.9.
    assert float(dice.compute()) == pytest.approx(0.75)
