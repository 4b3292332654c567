"""Distances between two histograms, for many pairs at once. Pure functions (numpy, scipy).

A drift test compares one observed pair of histograms with thousands of simulated ones
(`analytics._drift_null`), so every function here takes arrays whose last axis is the
buckets and returns one value per pair. Noisy bucket counts can be negative; they are
read as `shares`: clipped at zero, then divided by their total.

- PSI (population stability index): sum (p - q) ln(p / q), the symmetrised
  Kullback-Leibler divergence (`scipy.special.rel_entr` both ways). Every share is
  floored at `PSI_FLOOR` first, the usual convention: an empty bucket on one side would
  make it infinite.
- Jensen-Shannon distance: `scipy.spatial.distance.jensenshannon` in base 2, in [0, 1].
- Wasserstein (earth mover's) distance in 1-D between the two histograms, with each
  bucket's mass at its position: the bucket's index (`order`, so for the policy's
  doubling latency buckets one unit is a factor of two) or its midpoint in the signal's
  unit (`edges`). For weights on one shared support it is sum |F_p - F_q| x gap between
  positions, the identity `scipy.stats.wasserstein_distance` evaluates; it is computed
  here for all pairs at once (scipy's function takes one pair per call, 60 us each, too
  slow for 2,000 replicates per test), and tests pin it to scipy's value.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy.spatial.distance import jensenshannon  # type: ignore[import-untyped]
from scipy.special import rel_entr  # type: ignore[import-untyped]

__all__ = [
    "PSI_FLOOR",
    "STATISTICS",
    "Positions",
    "bucket_midpoints",
    "bucket_positions",
    "distances",
    "shares",
]

Positions = Literal["order", "edges"]
STATISTICS = ("psi", "js_distance", "wasserstein")
"""The distances `distances` returns, in its last axis' order."""
PSI_FLOOR = 1e-4
"""Smallest share PSI reads (0.01% of the events): an empty bucket would make it infinite."""

Array = npt.NDArray[np.float64]


def bucket_midpoints(uppers: Sequence[float | None]) -> Array:
    """Each bucket's midpoint in the signal's unit, from the buckets' upper edges.

    The first bucket starts at 0 when its upper edge is positive (durations, tokens),
    else one width of the next bucket below; the overflow bucket (upper None) is placed
    at the last finite edge, the smallest value it can hold.
    """
    finite = [u for u in uppers if u is not None]
    if not finite:
        return np.zeros(len(uppers))
    out: list[float] = []
    previous: float | None = None
    for upper in uppers:
        if upper is None:
            out.append(finite[-1])
            continue
        if previous is None:
            width = finite[1] - finite[0] if len(finite) > 1 else abs(upper) or 1.0
            lower = 0.0 if upper > 0.0 else upper - width
        else:
            lower = previous
        out.append((lower + upper) / 2.0)
        previous = upper
    return np.asarray(out, dtype=np.float64)


def bucket_positions(uppers: Sequence[float | None], positions: Positions) -> Array:
    """Where each bucket's mass sits for the Wasserstein distance."""
    if positions == "order":
        return np.arange(len(uppers), dtype=np.float64)
    return bucket_midpoints(uppers)


def shares(counts: npt.ArrayLike) -> Array:
    """Noisy counts as shares: clipped at zero and divided by their total (last axis).

    A histogram with nothing above zero has no shares: all NaN.
    """
    c = np.clip(np.asarray(counts, dtype=np.float64), 0.0, None)
    total = c.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        out: Array = np.where(total > 0.0, c / np.where(total > 0.0, total, 1.0), np.nan)
    return out


def _psi(p: Array, q: Array) -> Array:
    pf = np.maximum(p, PSI_FLOOR)
    qf = np.maximum(q, PSI_FLOOR)
    pf = pf / pf.sum(axis=-1, keepdims=True)
    qf = qf / qf.sum(axis=-1, keepdims=True)
    out: Array = (rel_entr(pf, qf) + rel_entr(qf, pf)).sum(axis=-1)
    return out


def _wasserstein(p: Array, q: Array, positions: Array) -> Array:
    order = np.argsort(positions, kind="stable")
    gaps = np.diff(positions[order])
    cdf_gap = np.cumsum(p[..., order] - q[..., order], axis=-1)[..., :-1]
    out: Array = (np.abs(cdf_gap) * gaps).sum(axis=-1)
    return out


def distances(a: npt.ArrayLike, b: npt.ArrayLike, positions: npt.ArrayLike) -> Array:
    """PSI, Jensen-Shannon distance and Wasserstein distance of each pair (a, b).

    `a` and `b` are noisy bucket counts of the same shape (..., buckets); `positions`
    one value per bucket. Returns shape (..., 3) in `STATISTICS` order; a pair where
    either side has no shares (nothing above zero) gives NaN.
    """
    p = shares(a)
    q = shares(b)
    pos = np.asarray(positions, dtype=np.float64)
    if p.shape != q.shape or p.shape[-1] != pos.shape[0]:
        raise ValueError(f"shapes differ: {p.shape}, {q.shape}, {pos.shape[0]} positions")
    with np.errstate(invalid="ignore", divide="ignore"):
        js = np.asarray(jensenshannon(p, q, axis=-1, base=2.0), dtype=np.float64)
    return np.stack([_psi(p, q), js, _wasserstein(p, q, pos)], axis=-1)
