"""The released noise has the declared distribution and scale (goodness of fit).

Thousands of draws from the client's own release functions, compared with the law the
released `NoiseSpec` declares: discrete Laplace P(k) = (1-a)/(1+a) a^|k|, a = e^(-1/t),
by a chi-square test; continuous Laplace by Kolmogorov-Smirnov. A correct release path
fails a test with probability 1e-4; each test also shows the statistic rejects a scale
25% off, so the tests have the power to notice a wrong scale.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from client._aggregation import HistogramSnapshot
from client._domain import CellDomain
from client._release import release_counter, release_histogram
from policies import CounterSignal, HistogramSignal
from schemas import CounterAggregate, HistogramAggregate, Mechanism, Tier, TotalAggregate

ALPHA = 1e-4
DRAWS = 1500


def _discrete_laplace_p_value(noise: list[int], scale: float) -> float:
    """Chi-square p-value of integer draws against discrete Laplace(scale)."""
    a = math.exp(-1.0 / scale)
    n = len(noise)
    # Cells k = -K..K, with both tails pooled into the end cells: each expected >= 5.
    k_max = 0
    while n * (1 - a) / (1 + a) * a ** (k_max + 1) >= 5.0:
        k_max += 1
    ks = np.arange(-k_max, k_max + 1)
    probs = (1 - a) / (1 + a) * a ** np.abs(ks)
    tail = a ** (k_max + 1) / (1 + a)  # P(X > K) = P(X < -K)
    probs[0] += tail
    probs[-1] += tail
    clipped = np.clip(np.asarray(noise), -k_max, k_max)
    observed = np.array([(clipped == k).sum() for k in ks])
    return float(stats.chisquare(observed, probs * n).pvalue)


def _counter_noise(
    signal: CounterSignal, raw: list[int]
) -> tuple[list[int], list[int], float, float]:
    """(cell noise draws, total noise draws, cell scale, total scale) from the release path."""
    domain = CellDomain(signal.attributes)
    cells: list[int] = []
    totals: list[int] = []
    cell_scale = total_scale = math.nan
    for _ in range(DRAWS):
        release = release_counter("s", signal, domain, raw)
        for aggregate, truth in zip(release.aggregates, release.truth, strict=True):
            assert isinstance(aggregate, CounterAggregate | TotalAggregate)
            assert aggregate.noise.mechanism is Mechanism.DISCRETE_LAPLACE
            value = truth.value  # type: ignore[union-attr]
            if isinstance(aggregate, TotalAggregate):
                totals.append(int(aggregate.value - value))
                total_scale = aggregate.noise.scale
            else:
                cells.append(int(aggregate.value - value))
                cell_scale = aggregate.noise.scale
    return cells, totals, cell_scale, total_scale


def test_counter_cells_and_totals_follow_the_declared_discrete_laplace() -> None:
    signal = CounterSignal(
        privacy_model="local",
        tier=Tier.HEALTH,
        attributes={"route": ["local", "cloud", "edge"]},
        max_per_window=2,
        epsilon=1.5,
        total_share=0.5,
    )
    cells, totals, cell_scale, total_scale = _counter_noise(signal, [1, 0, 2, 0])
    # The scales the policy implies: 2M/eps for cells, M/eps for the total (eps 0.75 each).
    assert cell_scale == pytest.approx(2 * 2 / 0.75)
    assert total_scale == pytest.approx(2 / 0.75)
    assert len(cells) == 4 * DRAWS
    assert _discrete_laplace_p_value(cells, cell_scale) > ALPHA
    assert _discrete_laplace_p_value(totals, total_scale) > ALPHA
    # Power: the same draws clearly refuse a scale 25% off.
    assert _discrete_laplace_p_value(cells, cell_scale * 1.25) < ALPHA
    assert _discrete_laplace_p_value(cells, cell_scale / 1.25) < ALPHA


def test_histogram_sums_follow_the_declared_laplace() -> None:
    signal = HistogramSignal(
        privacy_model="local",
        tier=Tier.PERFORMANCE,
        buckets=[1.0],
        max_events_per_window=2,
        value_range=(0.0, 5.0),
        epsilon=2.0,
        total_share=0.5,
    )
    domain = CellDomain({})
    sums: list[float] = []
    total_sums: list[float] = []
    sum_scale = total_sum_scale = math.nan
    for _ in range(2 * DRAWS):
        release = release_histogram("h", signal, domain, [HistogramSnapshot([1, 1], 6.0)])
        cell, _count_total, sum_total = release.aggregates
        assert isinstance(cell, HistogramAggregate)
        assert cell.sum is not None
        assert cell.sum_noise is not None
        assert isinstance(sum_total, TotalAggregate)
        assert sum_total.measure == "sum"
        sums.append(cell.sum - 6.0)
        total_sums.append(sum_total.value - 6.0)
        sum_scale, total_sum_scale = cell.sum_noise.scale, sum_total.noise.scale
    # Cells: d_in 2*N*hi = 20 at eps 0.5; total: d_in N*hi = 10 at eps 0.5.
    assert sum_scale == pytest.approx(40.0)
    assert total_sum_scale == pytest.approx(20.0)
    assert stats.kstest(sums, stats.laplace(scale=sum_scale).cdf).pvalue > ALPHA
    assert stats.kstest(total_sums, stats.laplace(scale=total_sum_scale).cdf).pvalue > ALPHA
    # Power: in units of their declared scales both are Laplace(1); pooled (6,000
    # draws), a scale 25% off is refused.
    unit = [x / sum_scale for x in sums] + [x / total_sum_scale for x in total_sums]
    assert stats.kstest(unit, stats.laplace(scale=1.0).cdf).pvalue > ALPHA
    assert stats.kstest(unit, stats.laplace(scale=1.25).cdf).pvalue < ALPHA
