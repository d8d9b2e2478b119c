"""Inputs far outside the training statistics: measured on the normalised network input.

numpy only, so Lightning ``predict`` and the torch-free predictor report the same thing. On the
normalised input ``(x - mean) / std`` the per-channel mean of the valid pixels is how many
training standard deviations the input's mean lies away, and its standard deviation is the
ratio of the input's spread to training's.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# A scene of one land cover stays within a few training standard deviations (the training
# spread includes every class); data in other units does not: surface reflectance (0..1) fed
# to a model trained on digital numbers lands tens to thousands of sigmas away, or with a
# spread thousands of times smaller. The limits sit between the two.
MAX_MEAN_SIGMAS = 6.0
MAX_SPREAD_RATIO = 100.0


class InputDrift:
    """Accumulates per-channel moments of normalised inputs over their valid pixels."""

    def __init__(self, channel_names: Sequence[str]) -> None:
        self.names = list(channel_names)
        k = len(self.names)
        self.count = np.zeros(k, dtype=np.float64)
        self.total = np.zeros(k, dtype=np.float64)
        self.total_sq = np.zeros(k, dtype=np.float64)

    def add(self, image: np.ndarray, valid: np.ndarray) -> None:
        """Add one normalised CHW input and its HW valid mask (nodata pixels are skipped)."""
        values = np.asarray(image, dtype=np.float64)[:, np.asarray(valid, dtype=bool)]
        finite = np.isfinite(values)
        values = np.where(finite, values, 0.0)
        self.count += finite.sum(axis=1)
        self.total += values.sum(axis=1)
        self.total_sq += (values**2).sum(axis=1)

    def summary(self) -> dict[str, dict[str, float]]:
        """Per channel: ``mean_sigmas`` (input mean - training mean, in training stds) and
        ``spread_ratio`` (input std / training std); channels without valid pixels are left out."""
        out = {}
        for i, name in enumerate(self.names):
            if self.count[i] == 0:
                continue
            mean = self.total[i] / self.count[i]
            std = float(np.sqrt(max(self.total_sq[i] / self.count[i] - mean**2, 0.0)))
            out[name] = {"mean_sigmas": round(float(mean), 3), "spread_ratio": round(std, 6)}
        return out

    def warnings(self) -> list[str]:
        """One message per channel far outside the training statistics."""
        found = []
        for name, s in self.summary().items():
            ratio = s["spread_ratio"]
            if abs(s["mean_sigmas"]) > MAX_MEAN_SIGMAS or (
                    ratio > 0 and not 1 / MAX_SPREAD_RATIO <= ratio <= MAX_SPREAD_RATIO):
                found.append(
                    f"channel {name}: input mean is {s['mean_sigmas']:+.1f} training standard "
                    f"deviations from the training mean, spread {ratio:.3g}x training's"
                )
        if found:
            found.append("the input is far outside the training statistics (other units or "
                         "scaling, e.g. reflectance 0..1 vs digital numbers, or another sensor?); "
                         "predictions are unreliable: give inputs processed like the training data")
        return found

    def report(self, source: str) -> dict[str, Any]:
        """Log the warnings for ``source`` and return them with the summary (output metadata)."""
        messages = self.warnings()
        for msg in messages:
            log.warning("%s: %s", source, msg)
        return {"input_warnings": messages, "input_statistics": self.summary(),
                "limits": {"max_mean_sigmas": MAX_MEAN_SIGMAS, "max_spread_ratio": MAX_SPREAD_RATIO}}
