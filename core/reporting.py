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

log = logging.getLogger(__name__)


def _save(fig: plt.Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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
        _save(fig, out / "confusion_matrix.png")
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
            _save(fig, out / "roc_curve.png")
    path = out / "metrics.json"
    path.write_text(json.dumps(report, indent=2, default=_jsonable))
    log.info("test report written to %s", out)
    return path


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return str(value)
