"""Test reports: ``metrics.json`` and PNG plots written into the run's log directory."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # reports are written on headless training machines
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402
from torchmetrics.classification import BinaryROC, MulticlassConfusionMatrix  # noqa: E402

from core.atomic import write_atomic  # noqa: E402

log = logging.getLogger(__name__)


def save_figure(fig: plt.Figure, path: Path) -> None:
    """Lay out, write (complete or not at all) and close a report figure."""
    try:
        fig.tight_layout()
        write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=120))
    finally:
        plt.close(fig)


def write_json_report(path: Path, report: dict[str, Any]) -> Path:
    """Write ``report`` as indented JSON at ``path``, complete or not at all."""
    text = json.dumps(report, indent=2, default=json_default)
    return write_atomic(path, lambda tmp: tmp.write_text(text))


def write_classification_report(
    log_dir: str | Path | None,
    metrics: dict[str, float],
    probs: Tensor,
    target: Tensor,
    class_names: list[str],
    multilabel: bool = False,
    operating_point: dict[str, Any] | None = None,
    scores: Tensor | None = None,
    positive: Tensor | None = None,
    checkpoint: str | None = None,
) -> Path | None:
    """Write ``metrics.json``, ``confusion_matrix.png`` and (binary decisions) ``roc_curve.png``.

    Returns the path of ``metrics.json``, or None when the trainer has no log directory.
    """
    if log_dir is None:
        return None
    out = Path(log_dir)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "split": "test",
        "checkpoint": checkpoint,
        "num_samples": int(target.shape[0]),
        "class_names": class_names,
        "metrics": {k.split("/", 1)[-1]: v for k, v in metrics.items()},
    }
    if not multilabel:
        confmat = MulticlassConfusionMatrix(num_classes=len(class_names))
        confmat.update(probs.cpu(), target.cpu())
        report["confusion_matrix"] = {"rows": "true class", "columns": "predicted class",
                                      "counts": confmat.compute().tolist()}
        fig, ax = confmat.plot(labels=class_names)
        ax.set_title("Test confusion matrix (argmax)")
        save_figure(fig, out / "confusion_matrix.png")
    if operating_point is not None and scores is not None and positive is not None:
        report["operating_point"] = operating_point
        if positive.any() and (~positive).any():
            roc = BinaryROC()
            roc.update(scores.cpu(), positive.long().cpu())
            fig, ax = roc.plot(score=True)
            fpr, recall = operating_point.get("op_false_positive_rate"), None
            for key, value in operating_point.items():
                if key.endswith("recall") and key != "target_recall":
                    recall = value
                if key.endswith(("false_positive_rate", "false_reject_rate")):
                    fpr = value
            if fpr is not None and recall is not None:
                ax.plot([fpr], [recall], "o", color="crimson", label="operating point")
                ax.legend(loc="lower right")
            ax.set_title("Test ROC curve")
            save_figure(fig, out / "roc_curve.png")
    path = out / "metrics.json"
    write_json_report(path, report)
    log.info("test report written to %s", out)
    return path


def json_default(value: Any) -> Any:
    """``json.dumps(default=...)`` for report values: tensors as lists, anything else as text."""
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return str(value)


def finite_or_none(value: float) -> float | None:
    """The value, or None where it is NaN/inf."""
    # Strict JSON has no NaN; an undefined score (class absent from labels and predictions) is null.
    return None if value != value or value in (float("inf"), float("-inf")) else float(value)


def write_segmentation_report(
    log_dir: str | Path | None,
    metrics: dict[str, float],
    confusion: Tensor,
    class_names: list[str],
    ignore_index: int | None = None,
    split: str = "test",
    checkpoint: str | None = None,
) -> Path | None:
    """Write ``metrics.json`` and ``confusion_matrix.png`` for a segmentation evaluation.

    Args:
        log_dir: the run's log directory; nothing is written when None.
        metrics: logged scalar metrics (keys may carry a ``"test/"`` prefix, which is dropped).
        confusion: pixel confusion matrix ``(K, K)``, rows true class, columns predicted class,
            with unlabelled (``ignore_index``) pixels already excluded.
        class_names: the ``K`` class names.
        ignore_index: label value of unlabelled pixels, recorded for the reader.
        split: name of the evaluated split.
        checkpoint: the evaluated checkpoint file (export finds its metrics by it).

    Returns:
        The path of ``metrics.json``, or None when there is no log directory.
    """
    if log_dir is None:
        return None
    out = Path(log_dir)
    out.mkdir(parents=True, exist_ok=True)
    counts = confusion.detach().cpu().double()
    tp = counts.diag()
    support, predicted = counts.sum(1), counts.sum(0)
    iou = tp / (support + predicted - tp)
    recall = tp / support
    precision = tp / predicted
    per_class = {
        name: {
            "iou": finite_or_none(float(iou[i])),
            "precision": finite_or_none(float(precision[i])),
            "recall": finite_or_none(float(recall[i])),
            "pixels": int(support[i]),
        }
        for i, name in enumerate(class_names)
    }
    report: dict[str, Any] = {
        "split": split,
        "checkpoint": checkpoint,
        "task": "semantic_segmentation",
        "num_labelled_pixels": int(counts.sum()),
        "ignore_index": ignore_index,
        "class_names": class_names,
        "metrics": {k.split("/", 1)[-1]: finite_or_none(v) for k, v in metrics.items()},
        "per_class_iou": {name: v["iou"] for name, v in per_class.items()},
        "per_class": per_class,
        "confusion_matrix": {"rows": "true class", "columns": "predicted class",
                             "unit": "pixels", "counts": counts.long().tolist()},
    }
    _plot_pixel_confusion(counts, class_names, out / "confusion_matrix.png")
    path = out / "metrics.json"
    write_json_report(path, report)
    log.info("segmentation report written to %s", out)
    return path


def _plot_pixel_confusion(counts: Tensor, class_names: list[str], path: Path) -> None:
    # Pixel counts span orders of magnitude, so colours show each row's share (recall per class).
    rows = counts / counts.sum(1, keepdim=True).clamp(min=1)
    k = len(class_names)
    size = max(4.0, 0.45 * k + 2.0)
    fig, ax = plt.subplots(figsize=(size + 1.0, size))
    image = ax.imshow(rows.numpy(), cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class's pixels")
    ax.set_xticks(range(k), class_names, rotation=45 if k > 4 else 0, ha="right" if k > 4 else "center")
    ax.set_yticks(range(k), class_names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if k <= 15:  # beyond that the numbers overlap
        for i in range(k):
            for j in range(k):
                share = float(rows[i, j])
                ax.text(j, i, f"{share:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if share > 0.5 else "black")
    ax.set_title("Test pixel confusion matrix (row-normalised)")
    save_figure(fig, path)
