"""The aggregators' noise: OpenDP's discrete Laplace at the smallest scale its own privacy
map accepts, and the values that come out of a noisy share follow that distribution."""

from __future__ import annotations

import math

import pytest
from nacl.public import PrivateKey
from scipy import stats

from ingest.aggregation import (
    DiscreteLaplaceNoise,
    add_noise,
    discrete_laplace_measurement,
    task_vdaf,
)
from policies import AggregationTask, aggregation_tasks, load_policy
from tests.ingest.aggregation.kit import small_policy


def _task(part: str = "inference.requests/cells") -> AggregationTask:
    return aggregation_tasks(small_policy(PrivateKey.generate()))[part]


@pytest.mark.parametrize(("sensitivity", "epsilon"), [(30, 1.0), (14, 0.25), (2, 2.0)])
def test_the_scale_is_the_smallest_opendp_accepts(sensitivity: int, epsilon: float) -> None:
    meas, scale = discrete_laplace_measurement(3, sensitivity, epsilon)
    assert meas.map(sensitivity) <= epsilon
    # A slightly smaller scale would spend more than epsilon: nothing is wasted.
    smaller, _ = discrete_laplace_measurement.__wrapped__(3, sensitivity, epsilon * 1.02)
    assert smaller.map(sensitivity) > epsilon
    # Pure DP discrete Laplace: epsilon = sensitivity / scale.
    assert scale == pytest.approx(sensitivity / epsilon, rel=1e-3)


def test_a_vector_task_is_noised_at_twice_its_bound() -> None:
    task = _task()
    assert task.length > 1
    draw = DiscreteLaplaceNoise().draw(task)
    assert len(draw.values) == task.length
    assert draw.scale == pytest.approx(2 * task.bound / task.epsilon, rel=1e-3)


@pytest.mark.parametrize(
    "task_id",
    [
        "inference.requests/total",
        "inference.errors/total",
        "gen_ai.client.operation.duration/total_events",
        "gen_ai.client.token.usage/total_sum",
    ],
)
def test_a_scalar_task_is_noised_at_its_bound(task_id: str) -> None:
    # One entry in [0, bound] (the proof's range): two devices' reports are at most
    # bound apart, so twice that scale would only add noise.
    task = aggregation_tasks(load_policy())[task_id]
    assert task.length == 1
    draw = DiscreteLaplaceNoise().draw(task)
    assert len(draw.values) == 1
    assert draw.scale == pytest.approx(task.bound / task.epsilon, rel=1e-3)
    # OpenDP's own privacy map at the largest distance of two reports spends the
    # task's epsilon, not less: the scale is the one this sensitivity needs.
    meas, scale = discrete_laplace_measurement(1, task.bound, task.epsilon)
    assert scale == draw.scale
    assert meas.map(task.bound) <= task.epsilon
    assert meas.map(task.bound) == pytest.approx(task.epsilon, rel=1e-3)


def _pmf(k: int, scale: float) -> float:
    a = math.exp(-1.0 / scale)
    return (1 - a) / (1 + a) * a ** abs(k)


def _bins(scale: float, n: int, min_expected: float) -> list[tuple[int, int, float]]:
    """Consecutive integer ranges [lo, hi] over the support (tails beyond K clamped into
    the end bins, their mass below 1e-12), each expecting at least `min_expected` draws."""
    k_max = math.ceil(scale * 30)  # P(|X| > K) ~ exp(-30)
    bins: list[tuple[int, int, float]] = []
    lo, mass = -k_max, 0.0
    for k in range(-k_max, k_max + 1):
        mass += _pmf(k, scale)
        if mass * n >= min_expected:
            bins.append((lo, k, mass))
            lo, mass = k + 1, 0.0
    last_lo, _, last_mass = bins[-1]
    bins[-1] = (last_lo, k_max, last_mass + mass)  # the remainder joins the last bin
    return bins


def test_noise_through_the_real_path_fits_its_declared_distribution() -> None:
    """A few thousand draws: drawn by the production source, added to an aggregate share
    in the field, read back by unsharding against a zero share (negatives wrap mod p).

    OpenDP's sampler cannot be seeded, so the test is statistical, at a conservative
    significance level: a correct sampler fails it once in 10,000 runs.
    """
    task = _task()
    vdaf = task_vdaf(task)
    zero_leader, zero_helper = vdaf.aggregate(0, []), vdaf.aggregate(1, [])
    source = DiscreteLaplaceNoise()
    samples: list[int] = []
    scale = 0.0
    while len(samples) < 4000:
        draw = source.draw(task)
        scale = draw.scale
        noisy = add_noise(vdaf, zero_leader, draw)
        values = [int(v) for v in vdaf.unshard(noisy, zero_helper, 1)]
        assert values == list(draw.values)
        samples.extend(values)
    n = len(samples)
    bins = _bins(scale, n, 40.0)
    k_max = bins[-1][1]
    clamped = [min(max(v, -k_max), k_max) for v in samples]
    observed = [sum(1 for v in clamped if lo <= v <= hi) for lo, hi, _ in bins]
    expected = [n * m for _, _, m in bins]
    assert sum(observed) == n
    assert sum(expected) == pytest.approx(n, rel=1e-6)
    assert len(bins) >= 10
    result = stats.chisquare(observed, expected, sum_check=False)
    assert result.pvalue > 1e-4, (bins, observed)
    # The mean and variance match too (variance 2a/(1-a)^2).
    a = math.exp(-1.0 / scale)
    variance = 2 * a / (1 - a) ** 2
    mean = sum(samples) / n
    assert abs(mean) < 5 * math.sqrt(variance / n)
