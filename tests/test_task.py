import json
import math

import pytest
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging, ModelCheckpoint
from torch.utils.data import DataLoader, Dataset

from core import operating_point as op
from core.classification import ClassificationTask
from core.recipe import warmup_cosine
from domains.manufacturing import DefectClassificationTask

from .conftest import TINY, mean_loss
from .conftest import cpu_trainer as trainer


class DictDataset(Dataset):
    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"image": self.images[i], "label": self.labels[i], "id": f"sample_{i}"}


def separable_data(n=32, chans=1, size=32, seed=0, multilabel=False):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    images = torch.randn(n, chans, size, size, generator=g) * 0.3
    images += (labels.float() * 2 - 1).view(-1, 1, 1, 1)  # class 1 bright, class 0 dark
    if multilabel:
        labels = torch.stack([labels, 1 - labels, torch.ones_like(labels)], dim=1)
    return DictDataset(images, labels)


@pytest.mark.parametrize("multilabel", [False, True])
def test_a_few_steps_lower_the_loss(tmp_path, multilabel):
    data = separable_data(multilabel=multilabel)
    task = ClassificationTask(**TINY, in_chans=1, num_classes=3 if multilabel else 2,
                              multilabel=multilabel, lr=3e-3, warmup_epochs=0, drop_path_rate=0.0)
    before = mean_loss(task, data)
    trainer(tmp_path, max_epochs=8).fit(task, DataLoader(data, batch_size=8, shuffle=True))
    after = mean_loss(task, data)
    assert after < 0.8 * before


def test_operating_point_reaches_target_recall_on_constructed_scores():
    # 20 positives with scores 0.05..1.0 and 20 negatives with scores 0.0..0.475.
    pos = torch.linspace(0.05, 1.0, 20)
    neg = torch.linspace(0.0, 0.475, 20)
    scores = torch.cat([pos, neg])
    target = torch.cat([torch.ones(20), torch.zeros(20)]).bool()
    t = op.threshold_for_recall(scores, target, 0.95)
    assert math.isclose(t, float(pos[1]), rel_tol=1e-6)  # the 19th highest positive
    rates = op.rates_at_threshold(scores, target, t)
    assert rates["recall"] == pytest.approx(0.95)
    assert rates["tp"] == 19 and rates["fn"] == 1
    # Every negative scoring >= t is a false positive; anything lower would cost specificity.
    assert rates["fp"] == int((neg >= t).sum())
    assert op.rates_at_threshold(scores, target, t + 1e-4)["recall"] < 0.95
    assert op.threshold_for_recall(scores, target, 1.0) == pytest.approx(0.05)


def test_youden_threshold_separates_perfectly_separable_scores():
    scores = torch.tensor([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    target = torch.tensor([0, 0, 0, 1, 1, 1]).bool()
    t = op.youden_threshold(scores, target)
    assert 0.3 < t <= 0.7
    assert op.rates_at_threshold(scores, target, t)["specificity"] == 1.0


class ScoreTask(DefectClassificationTask):
    """Outputs logits [0, z] with z = mean pixel, so P(defective) = sigmoid(z) is chosen by data."""

    def forward(self, x):
        z = x.mean(dim=(1, 2, 3))
        return torch.stack([torch.zeros_like(z), z], dim=1)


def score_data(probs, labels):
    z = torch.logit(torch.tensor(probs))
    images = z.view(-1, 1, 1, 1).expand(-1, 1, 8, 8).clone()
    return DictDataset(images, torch.tensor(labels))


def test_task_stores_threshold_and_reports_rates_at_it(tmp_path):
    task = ScoreTask(**TINY, in_chans=1, num_classes=2, class_names=["good", "defective"],
                     target_recall=0.75)
    val = score_data([0.9, 0.8, 0.6, 0.3, 0.5, 0.2, 0.1, 0.05], [1, 1, 1, 1, 0, 0, 0, 0])
    t = trainer(tmp_path, logger=True)
    t.validate(task, DataLoader(val, batch_size=4))
    assert float(task.threshold) == pytest.approx(0.6, abs=1e-5)  # 3 of 4 defects at >= 0.6
    assert t.callback_metrics["val/op_defect_recall"] == pytest.approx(0.75)

    test = score_data([0.95, 0.65, 0.55, 0.7, 0.2, 0.4], [1, 1, 1, 0, 0, 0])
    results = t.test(task, DataLoader(test, batch_size=3))[0]
    assert results["test/op_defect_recall"] == pytest.approx(2 / 3)
    assert results["test/op_false_reject_rate"] == pytest.approx(1 / 3)
    report = json.loads((tmp_path / "lightning_logs" / "version_0" / "metrics.json").read_text())
    assert report["operating_point"]["op_threshold"] == pytest.approx(0.6, abs=1e-5)
    assert report["confusion_matrix"]["counts"] == [[2, 1], [0, 3]]  # argmax: 0.55 counts as defective
    assert report["operating_point"]["fn"] == 1  # at the 0.6 threshold it does not
    assert (tmp_path / "lightning_logs" / "version_0" / "roc_curve.png").stat().st_size > 0
    assert (tmp_path / "lightning_logs" / "version_0" / "confusion_matrix.png").stat().st_size > 0
    # The threshold lives in the state dict, hence in every checkpoint.
    assert "threshold" in task.state_dict()


def test_recipe_param_groups_decay_layers_and_skip_norm_weight_decay(tmp_path):
    task = ClassificationTask(**TINY, num_classes=2, lr=1e-3, layer_decay=0.5)
    task.trainer = trainer(tmp_path, max_epochs=2)
    task.trainer.fit_loop.max_epochs = 2
    opt = task.configure_optimizers()["optimizer"]
    names = {id(p): n for n, p in task.named_parameters()}
    lr_of = {names[id(p)]: g["lr"] for g in opt.param_groups for p in g["params"]}
    wd_of = {names[id(p)]: g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert lr_of["backbone.model.stem.0.weight"] < lr_of["backbone.model.stages.3.blocks.0.conv_dw.weight"]
    assert lr_of["backbone.model.head.fc.weight"] == pytest.approx(1e-3)
    assert wd_of["backbone.model.head.norm.weight"] == 0.0
    assert wd_of["backbone.model.stem.0.bias"] == 0.0
    assert wd_of["backbone.model.stem.0.weight"] == pytest.approx(0.05)


def test_warmup_then_cosine_schedule():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_cosine(opt, warmup_steps=4, total_steps=20, min_lr_ratio=0.0)
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:], strict=False))
    assert lrs[-1] < 0.02


def test_frozen_backbone_trains_only_the_head(tmp_path):
    task = ClassificationTask(**TINY, in_chans=1, num_classes=2, freeze_backbone_epochs=1,
                              warmup_epochs=0)
    stem0 = task.backbone.model.stem[0].weight.detach().clone()
    head0 = task.backbone.model.head.fc.weight.detach().clone()
    trainer(tmp_path, max_epochs=1).fit(task, DataLoader(separable_data(), batch_size=8))
    assert torch.equal(task.backbone.model.stem[0].weight, stem0)
    assert not torch.equal(task.backbone.model.head.fc.weight, head0)


def test_default_callbacks_follow_the_task(tmp_path):
    task = ClassificationTask(**TINY, num_classes=2, ema_decay=0.99)
    task.trainer = trainer(tmp_path, enable_checkpointing=True)
    callbacks = task.configure_callbacks()
    ckpt = next(c for c in callbacks if isinstance(c, ModelCheckpoint))
    assert (ckpt.monitor, ckpt.mode) == ("val/auroc", "max")
    assert any(isinstance(c, EMAWeightAveraging) for c in callbacks)


def test_nan_loss_is_reported_with_a_fix(tmp_path):
    data = separable_data()
    data.images[3] = float("nan")
    task = ClassificationTask(**TINY, in_chans=1, num_classes=2)
    with pytest.raises(FloatingPointError, match="Lower model.init_args.lr .* NaN"):
        trainer(tmp_path, max_epochs=1).fit(task, DataLoader(data, batch_size=32))


def test_balanced_class_weights_and_label_smoothing_change_the_loss():
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.2], [-1.0, 1.0]])
    target = torch.tensor([0, 1, 1])
    plain = ClassificationTask(**TINY, num_classes=2)
    weighted = ClassificationTask(**TINY, num_classes=2, class_weights=[1.0, 3.0])
    smooth = ClassificationTask(**TINY, num_classes=2, label_smoothing=0.2)
    base = plain.compute_loss(logits, target)
    assert weighted.compute_loss(logits, target) != pytest.approx(float(base))
    assert smooth.compute_loss(logits, target) != pytest.approx(float(base))
    with pytest.raises(ValueError, match="class_weights has 3 entries for 2 classes"):
        ClassificationTask(**TINY, num_classes=2, class_weights=[1.0, 2.0, 3.0])


def test_epoch_metrics_reset_cleanly_without_warnings():
    import warnings

    task = ClassificationTask(**TINY, num_classes=2)
    g = torch.Generator().manual_seed(0)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*compute.*called before.*update")
        for _ in range(3):  # epochs: update, compute, reset
            for _ in range(2):
                probs = torch.softmax(torch.randn(8, 2, generator=g), 1)
                task.train_metrics.update(probs, torch.randint(0, 2, (8,), generator=g))
            values = task.train_metrics.compute()
            task.train_metrics.reset()
    assert {"train/recall_1", "train/precision_1", "train/acc"} <= set(values)


def test_non_finite_validation_stops_with_our_message(tmp_path):
    # NaN outputs on validation (weights diverged on the epoch's last step, or NaN inputs) used to
    # end in "TypeError: list indices must be integers" from the operating-point code.
    task = ScoreTask(**TINY, in_chans=1, num_classes=2, class_names=["good", "defective"],
                     target_recall=0.9)
    val = score_data([0.9, 0.8, 0.6, 0.3, 0.5, 0.2, 0.1, 0.05], [1, 1, 1, 1, 0, 0, 0, 0])
    val.images[:] = float("nan")
    with pytest.raises(FloatingPointError, match="val loss became nan .* not finite. Check the input"):
        trainer(tmp_path).validate(task, DataLoader(val, batch_size=4))


def test_divergence_during_fit_names_the_learning_rate(tmp_path):
    class DivergesAfterTraining(ScoreTask):
        def on_train_batch_end(self, *args):  # the epoch's last optimizer step left NaN weights
            self.diverged = True

        def forward(self, x):
            out = super().forward(x)
            bias = self.backbone.model.head.fc.bias.sum()
            return out * float("nan") if getattr(self, "diverged", False) else out + 0 * bias

    task = DivergesAfterTraining(**TINY, in_chans=1, num_classes=2, class_names=["good", "defective"])
    data = score_data([0.9, 0.2, 0.8, 0.1], [1, 0, 1, 0])
    with pytest.raises(FloatingPointError, match="val loss became nan .*training diverged. Lower model"):
        trainer(tmp_path, max_epochs=1, num_sanity_val_steps=0).fit(
            task, DataLoader(data, batch_size=4), DataLoader(data, batch_size=4))


def test_missing_operating_point_is_said_not_silent(tmp_path, caplog):
    task = ScoreTask(**TINY, in_chans=1, num_classes=2, class_names=["good", "defective"],
                     target_recall=0.75)
    test = score_data([0.95, 0.65, 0.55, 0.7, 0.2, 0.4], [1, 1, 1, 0, 0, 0])
    with caplog.at_level("WARNING", logger="core.classification"):
        results = trainer(tmp_path).test(task, DataLoader(test, batch_size=3))[0]
    assert "no operating point was chosen on validation" in caplog.text
    assert results["test/op_threshold"] == pytest.approx(0.5)


def test_channels_last_policy_converts_weights_and_activations_and_trains_the_same(tmp_path, monkeypatch):
    """On CUDA the task runs NHWC (channels_last). Forced on for CPU here: the weights and the
    stem convolution's outputs are channels_last, and the trained weights equal an NCHW run's."""
    import core.task as task_module

    assert task_module.channels_last_on(torch.device("cuda")) is True
    assert task_module.channels_last_on(torch.device("cpu")) is False
    data = separable_data(n=16, chans=3)  # with one channel both layouts are the same strides

    def fit(layout_on: bool):
        monkeypatch.setattr(task_module, "channels_last_on", lambda device: layout_on)
        torch.manual_seed(0)
        task = ClassificationTask(**TINY, in_chans=3, num_classes=2, warmup_epochs=0, drop_path_rate=0.0)
        seen = []
        task.backbone.model.stem[0].register_forward_hook(lambda m, i, out: seen.append(out))
        trainer(tmp_path, max_epochs=1).fit(task, DataLoader(data, batch_size=8))
        return task, seen

    nhwc, seen = fit(True)
    assert nhwc.backbone.model.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert len(seen) == 2 and all(x.is_contiguous(memory_format=torch.channels_last)
                                  and not x.is_contiguous() for x in seen)
    nchw, seen = fit(False)
    assert nchw.backbone.model.stem[0].weight.is_contiguous() and seen[0].is_contiguous()
    for (name, a), b in zip(nhwc.state_dict().items(), nchw.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, equal_nan=True, msg=name)


def test_the_sanity_check_does_not_choose_the_operating_point(tmp_path):
    data = separable_data(n=16)
    task = DefectClassificationTask(**TINY, in_chans=1, num_classes=2, class_names=["good", "defect"])
    fit = trainer(tmp_path, max_epochs=1, limit_train_batches=0, num_sanity_val_steps=1)
    fit.fit(task, DataLoader(data, batch_size=8), DataLoader(data, batch_size=8))
    assert torch.isnan(task.threshold)
