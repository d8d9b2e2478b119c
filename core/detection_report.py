"""Detection test report: ``metrics.json`` and ``detections.png`` in the run's log directory."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from core.reporting import finite_or_none, plt, save_figure, write_json_report

log = logging.getLogger(__name__)

TRUE_COLOUR = "limegreen"
PRED_COLOUR = "red"


@dataclass
class SampleImage:
    """One test image with its true boxes and the detections kept at the operating threshold."""

    id: str
    image: Tensor  # (C, H, W), normalised as the network saw it
    true_boxes: Tensor
    true_labels: Tensor
    boxes: Tensor
    scores: Tensor
    labels: Tensor


def write_detection_report(
    log_dir: str | Path | None,
    metrics: dict[str, float],
    class_names: list[str],
    samples: list[SampleImage],
    details: dict[str, Any],
    checkpoint: str | None = None,
    threshold: float | None = None,
    split: str = "test",
) -> Path | None:
    """Write ``metrics.json`` and (when there are samples) ``detections.png``.

    Args:
        log_dir: the run's log directory; nothing is written when None.
        metrics: logged scalar metrics (a ``"test/"`` prefix is dropped); ``ap_<class>`` values
            also go to ``per_class_ap``.
        class_names: names of the 0-based labels.
        samples: images to draw, with detections already filtered at the operating threshold.
        details: further sections of the report (detector, anchors, operating point, counts).
        checkpoint: the evaluated checkpoint file (export finds its metrics by it).
        threshold: the operating score threshold the samples were filtered at (for the title).
        split: name of the evaluated split.

    Returns:
        The path of ``metrics.json``, or None when there is no log directory.
    """
    if log_dir is None:
        return None
    out = Path(log_dir)
    out.mkdir(parents=True, exist_ok=True)
    scalars = {k.split("/", 1)[-1]: finite_or_none(v) for k, v in metrics.items()}
    report: dict[str, Any] = {
        "split": split,
        "checkpoint": checkpoint,
        "task": "detection",
        "class_names": class_names,
        "metrics": scalars,
        "per_class_ap": {name: scalars.get(f"ap_{name}") for name in class_names},
        **details,
    }
    if samples:
        draw_detections(samples, class_names, out / "detections.png", threshold=threshold)
    path = out / "metrics.json"
    write_json_report(path, report)
    log.info("detection report written to %s", out)
    return path


def display_image(image: Tensor) -> Tensor:
    """An ``(H, W)`` or ``(H, W, 3)`` array in 0..1 for drawing: the first three channels (or
    the first one, for fewer than three), each stretched from its 1st to 99th percentile,
    because the network's input is normalised and may have any number of channels."""
    channels = image[:3] if image.shape[0] >= 3 else image[:1]
    flat = channels.float().flatten(1)
    low = torch.quantile(flat, 0.01, dim=1)[:, None, None]
    high = torch.quantile(flat, 0.99, dim=1)[:, None, None]
    shown = ((channels - low) / (high - low).clamp(min=1e-6)).clamp(0, 1)
    return shown[0] if shown.shape[0] == 1 else shown.permute(1, 2, 0)


def draw_detections(samples: list[SampleImage], class_names: list[str], path: Path,
                    threshold: float | None = None) -> None:
    """A grid of images, true boxes in green and kept detections in red with class and score."""
    cols = min(4, len(samples))
    rows = math.ceil(len(samples) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, sample in zip(axes.flat, samples, strict=False):
        ax.imshow(display_image(sample.image).cpu().numpy(), cmap="gray")
        for box in sample.true_boxes.tolist():
            _box(ax, box, TRUE_COLOUR, None)
        for box, score, label in zip(sample.boxes.tolist(), sample.scores.tolist(),
                                     sample.labels.tolist(), strict=True):
            _box(ax, box, PRED_COLOUR, f"{class_names[label]} {score:.2f}")
        ax.set_title(str(sample.id)[-28:], fontsize=8)
    at = "" if threshold is None else f" (score >= {threshold:.3f})"
    fig.suptitle(f"green: true boxes, red: detections{at}", fontsize=10)
    save_figure(fig, path)


def _box(ax: Any, box: list[float], colour: str, text: str | None) -> None:
    x0, y0, x1, y1 = box
    ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=colour,
                               linewidth=1.2))
    if text:
        ax.text(x0, y0, text, color="white", fontsize=6, va="bottom",
                bbox={"facecolor": colour, "alpha": 0.7, "pad": 1, "linewidth": 0})
