"""The figures an analyst reads off a day's release, their targets, and their errors.

Targets (issue 7, item 7), at 10,000 devices under the default policy (aggregate model):
a day's fleet total per signal within TOTAL_TARGET, a (model x route) cell's day count
within COUNT_TARGET, the mean latency of every cell holding at least MEAN_MIN_SHARE of
the day's events within MEAN_TARGET (relative RMS error against the unclamped truth).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from benchmarks._fleet import MODELS, REQUESTS, Layout
from benchmarks._releases import COUNTERS, Part
from benchmarks._types import FloatArray

__all__ = [
    "COUNT_TARGET",
    "MEAN_MIN_SHARE",
    "MEAN_TARGET",
    "TOTAL_TARGET",
    "Error",
    "Figure",
    "error",
    "figures",
    "series",
]

TOTAL_TARGET, COUNT_TARGET, MEAN_TARGET, MEAN_MIN_SHARE = 0.02, 0.10, 0.10, 0.10


@dataclass(frozen=True, slots=True)
class Figure:
    """A figure an analyst reads off a day's release, and its target (None: none)."""

    name: str
    part: str  # the per-cell part: a counter's short name, `<histogram>.counts` / `.sums`
    truth: str  # its unclamped truth in the fleet sums, per cell
    cells: tuple[int, ...]
    total: str | None = None  # the scalar total part read instead, where released
    mean: bool = False  # `part`'s histogram: sums / counts in one cell
    target: float | None = None
    share: float = 1.0  # of the day's events (mean figures)


@dataclass(frozen=True, slots=True)
class Error:
    """Relative errors of a day's figure over the trials (RMS; bias: mean)."""

    rms: float  # against the unclamped truth
    se: float  # Monte Carlo standard error of `rms`
    noise: float  # against the clamped input: the noise's part alone
    analytic: float  # the noise model's
    bias: float  # clamping's


def figures(layout: Layout, sums: dict[str, FloatArray]) -> list[Figure]:
    """Each signal's day total (from its total task where released: `Figure.total`), and
    per (model x route) cell its count (from the requests counter) and its mean latency
    (a target where the cell holds MEAN_MIN_SHARE of the events in `sums`)."""

    def every(truth: str) -> tuple[int, ...]:
        return tuple(range(sums[truth].shape[1]))

    out = [
        Figure(
            f"total {name}",
            short,
            f"{name}.truth",
            every(f"{name}.truth"),
            f"{short}.total",
            target=TOTAL_TARGET,
        )
        for name, short in COUNTERS.items()
    ]
    for h, label in (("latency", "duration"), ("tokens", "token.usage")):
        unit = "seconds" if h == "latency" else "tokens"
        cells = every(f"{h}.events")
        out += [
            Figure(
                f"total {label} events",
                f"{h}.counts",
                f"{h}.events",
                cells,
                f"{h}.total_events",
                target=TOTAL_TARGET,
            ),
            Figure(
                f"total {label} {unit}",
                f"{h}.sums",
                f"{h}.total",
                cells,
                f"{h}.total_sum",
                target=TOTAL_TARGET,
            ),
        ]
    events = sums["latency.events"]
    share = events.sum(axis=0) / events.sum()
    for r, route in enumerate(("local", "edge", "cloud")):
        for m, model in enumerate(MODELS):
            cell, at = int(layout.request_cell[r, m]), int(layout.latency_cell[r, m])
            label = f"{model.split('@')[1]} {route}"
            out.append(
                Figure(
                    f"count {label}",
                    "requests",
                    f"{REQUESTS}.truth",
                    (cell,),
                    target=COUNT_TARGET,
                )
            )
            target = MEAN_TARGET if share[at] >= MEAN_MIN_SHARE else None
            out.append(
                Figure(
                    f"mean latency {label}",
                    "latency",
                    "latency",
                    (at,),
                    mean=True,
                    target=target,
                    share=float(share[at]),
                )
            )
    return out


def series(
    figure: Figure, parts: dict[str, Part], sums: dict[str, FloatArray]
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """(estimate, clamped input, unclamped truth, noise variance) per trial."""
    cells = list(figure.cells)
    if figure.mean:
        (cell,) = cells
        s, c = parts[f"{figure.part}.sums"], parts[f"{figure.part}.counts"]
        truth = sums[f"{figure.truth}.total"][:, cell] / sums[f"{figure.truth}.events"][:, cell]
        s_in, c_in = s.clamped[:, cell], c.clamped[:, cell]
        variance = (s.variance + (s_in / c_in) ** 2 * c.variance) / c_in**2
        return s.values[:, cell] / c.values[:, cell], s_in / c_in, truth, variance
    truth = sums[figure.truth][:, cells].sum(axis=1)
    if figure.total is not None and figure.total in parts:
        total = parts[figure.total]
        variance = np.full(len(truth), total.variance)
        return total.values[:, 0], total.clamped[:, 0], truth, variance
    part = parts[figure.part]
    variance = np.full(len(truth), len(cells) * part.variance)
    return part.values[:, cells].sum(axis=1), part.clamped[:, cells].sum(axis=1), truth, variance


def error(est: FloatArray, clamped: FloatArray, truth: FloatArray, var: FloatArray) -> Error:
    squares = ((est - truth) / truth) ** 2
    rms = math.sqrt(float(squares.mean()))
    se = math.sqrt(float(squares.var()) / len(squares)) / (2 * rms) if rms > 0 else 0.0
    return Error(
        rms=rms,
        se=se,
        noise=math.sqrt(float((((est - clamped) / truth) ** 2).mean())),
        analytic=math.sqrt(float((var / truth**2).mean())),
        bias=float(((clamped - truth) / truth).mean()),
    )
