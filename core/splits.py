"""Seeded, stratified, optionally grouped train/val/test splits."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np

SPLITS = ("train", "val", "test")


def _allocate(n: int, fractions: Sequence[float]) -> list[int]:
    """Split ``n`` items into counts proportional to ``fractions`` (largest remainder)."""
    raw = [n * f for f in fractions]
    counts = [int(np.floor(r)) for r in raw]
    for i in sorted(range(len(raw)), key=lambda i: raw[i] - counts[i], reverse=True)[: n - sum(counts)]:
        counts[i] += 1
    return counts


def stratified_split(
    strata: Sequence,
    val_fraction: float,
    test_fraction: float,
    seed: int = 42,
    groups: Sequence | None = None,
) -> dict[str, np.ndarray]:
    """Split sample indices into train/val/test, stratified by ``strata``.

    With ``groups`` (patient IDs, spatial blocks, ...) whole groups are assigned, so no group
    appears in two splits; a group is stratified by its most common stratum. The result depends
    only on the inputs and ``seed``.

    Args:
        strata: per-sample stratum (label, or label + site, ...).
        val_fraction: fraction of all samples for validation.
        test_fraction: fraction of all samples for testing.
        seed: random seed.
        groups: optional per-sample group key.
    Returns:
        ``{"train": idx, "val": idx, "test": idx}`` with sorted index arrays.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(
            f"val_fraction={val_fraction} and test_fraction={test_fraction} must be >= 0 and sum to < 1"
        )
    n = len(strata)
    keys = list(range(n)) if groups is None else list(groups)
    if len(keys) != n:
        raise ValueError(f"{len(keys)} group keys for {n} samples")
    members: dict = defaultdict(list)
    for i, key in enumerate(keys):
        members[key].append(i)
    by_stratum: dict = defaultdict(list)
    for key, idx in members.items():
        stratum = Counter(str(strata[i]) for i in idx).most_common(1)[0][0]
        by_stratum[stratum].append(key)

    rng = np.random.default_rng(seed)
    fractions = [1 - val_fraction - test_fraction, val_fraction, test_fraction]
    out: dict[str, list[int]] = {s: [] for s in SPLITS}
    seen, assigned = 0, [0, 0, 0]
    for stratum in sorted(by_stratum):
        # Groups in order of first appearance: the split must not depend on the key values,
        # which may be per-run pseudonyms (patients).
        group_keys = by_stratum[stratum]
        order = rng.permutation(len(group_keys))
        # Allocate against the running total so per-stratum rounding does not pile up.
        seen += len(group_keys)
        counts = [t - a for t, a in zip(_allocate(seen, fractions), assigned, strict=True)]
        if min(counts) < 0:
            counts = _allocate(len(group_keys), fractions)
        assigned = [a + c for a, c in zip(assigned, counts, strict=True)]
        start = 0
        for split, count in zip(SPLITS, counts, strict=True):
            for j in order[start : start + count]:
                out[split].extend(members[group_keys[j]])
            start += count
    return {s: np.array(sorted(v), dtype=np.int64) for s, v in out.items()}


def split_from_column(values: Sequence[str]) -> dict[str, np.ndarray]:
    """Indices per split from a given per-sample split column (``train``/``val``/``test``)."""
    bad = sorted({v for v in values if v not in SPLITS})
    if bad:
        raise ValueError(f"split column has values {bad}; allowed: {list(SPLITS)}")
    arr = np.asarray(values)
    return {s: np.flatnonzero(arr == s) for s in SPLITS}
