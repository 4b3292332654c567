"""What is released: the full domain, noise calibrated by OpenDP's own map, unbiased."""

from __future__ import annotations

import math
import statistics

import pytest

from client._aggregation import HistogramSnapshot
from client._domain import CellDomain
from client._release import (
    apportion,
    counter_measurement,
    release_counter,
    release_histogram,
    sum_measurement,
)
from policies import OTHER, CounterSignal, HistogramSignal
from schemas import CounterAggregate, HistogramAggregate, Mechanism, Tier
from tests.client.conftest import POLICY, MakeTelemetry


def test_every_cell_of_the_declared_domain_is_released(make_telemetry: MakeTelemetry, clock):
    qw = make_telemetry()
    qw.counter("inference.requests").add(1, route="local", model="a@1")
    (envelope,) = qw.collect(clock.advance(hours=1))
    cells = {
        (a.attributes["route"], a.attributes["model"])
        for a in envelope.aggregates
        if a.signal == "inference.requests"
    }
    assert cells == {
        (r, m) for r in ("local", "edge", "cloud", OTHER) for m in ("a@1", "b@2", OTHER)
    }
    latency = [a for a in envelope.aggregates if a.signal == "latency"]
    assert {a.attributes["route"] for a in latency} == {"local", "cloud", OTHER}
    assert all(isinstance(a, HistogramAggregate) and len(a.counts) == 4 for a in latency)
    starts = [a for a in envelope.aggregates if a.signal == "app.starts"]
    assert len(starts) == 1
    assert starts[0].attributes == {}
    # Zero cells are noisy too: released values are not all zero.
    assert any(a.value != 0 for a in envelope.aggregates if isinstance(a, CounterAggregate))


def test_counter_noise_scale_gives_exactly_the_policy_epsilon(make_telemetry, clock) -> None:
    qw = make_telemetry()
    (envelope,) = qw.collect(clock.advance(hours=1))
    signal = POLICY.signals["inference.requests"]
    assert isinstance(signal, CounterSignal)
    aggregate = next(a for a in envelope.aggregates if a.signal == "inference.requests")
    assert isinstance(aggregate, CounterAggregate)
    noise = aggregate.noise
    assert noise.mechanism is Mechanism.DISCRETE_LAPLACE
    assert (noise.epsilon, noise.lower, noise.upper) == (0.5, 0.0, 10.0)
    # Local model: any two windows are neighbours; the clamped vector has total <= 10.
    d_in = 2 * signal.max_per_window
    meas, scale = counter_measurement(12, d_in, signal.epsilon)
    assert noise.scale == scale == pytest.approx(d_in / signal.epsilon)
    assert meas.map(d_in) <= signal.epsilon
    assert meas.map(d_in + 1) > signal.epsilon  # no looser than it has to be


def test_histogram_splits_epsilon_between_counts_and_sum(make_telemetry, clock) -> None:
    qw = make_telemetry()
    (envelope,) = qw.collect(clock.advance(hours=1))
    signal = POLICY.signals["latency"]
    assert isinstance(signal, HistogramSignal)
    aggregate = next(a for a in envelope.aggregates if a.signal == "latency")
    assert isinstance(aggregate, HistogramAggregate)
    assert aggregate.sum_noise is not None
    count_noise, sum_noise = aggregate.count_noise, aggregate.sum_noise
    assert count_noise.epsilon is not None
    assert sum_noise.epsilon is not None
    assert count_noise.epsilon + sum_noise.epsilon <= signal.epsilon
    assert sum_noise.epsilon == pytest.approx(signal.epsilon * signal.sum_share)
    assert sum_noise.mechanism is Mechanism.LAPLACE
    # 5 events of at most 20 across cells: the sum vector's L1 diameter is 2 * 5 * 20.
    sum_meas, sum_scale = sum_measurement(3, 200.0, sum_noise.epsilon)
    assert sum_noise.scale == sum_scale
    assert sum_meas.map(200.0) <= sum_noise.epsilon
    assert (sum_noise.lower, sum_noise.upper) == (0.0, 100.0)


def test_apportion_is_deterministic_and_bounded() -> None:
    assert apportion([3, 3, 3], 10) == [3, 3, 3]
    assert apportion([5, 5, 5], 10) == [4, 3, 3]  # tie on remainders: lowest index first
    assert apportion([100, 0, 1], 10) == [10, 0, 0]
    assert sum(apportion([7, 11, 13, 2], 9)) == 9


def test_mean_of_releases_is_the_clamped_truth() -> None:
    """Many releases of one fixed count average to it within a few standard errors."""
    signal = CounterSignal(privacy_model="local", tier=Tier.HEALTH, max_per_window=5, epsilon=1.0)
    domain = CellDomain({})
    truth, n = 4, 3000
    values = [release_counter("s", signal, domain, [truth]).aggregates[0].value for _ in range(n)]
    scale = 2 * 5 / 1.0
    # Discrete Laplace with scale b has variance below 2 b^2 (the continuous one's).
    standard_error = math.sqrt(2) * scale / math.sqrt(n)
    assert abs(statistics.fmean(values) - truth) < 5 * standard_error
    assert statistics.pstdev(values) == pytest.approx(math.sqrt(2) * scale, rel=0.15)


def test_histogram_sum_release_is_unbiased() -> None:
    signal = HistogramSignal(
        privacy_model="local",
        tier=Tier.PERFORMANCE,
        buckets=[1.0],
        max_events_per_window=2,
        value_range=(0.0, 10.0),
        epsilon=2.0,
    )
    domain = CellDomain({})
    n = 2000
    sums = []
    for _ in range(n):
        release = release_histogram("h", signal, domain, [HistogramSnapshot([1, 1], 6.0)])
        aggregate = release.aggregates[0]
        assert isinstance(aggregate, HistogramAggregate)
        assert aggregate.sum is not None
        sums.append(aggregate.sum)
    scale = 2 * 2 * 10 / 1.0
    assert abs(statistics.fmean(sums) - 6.0) < 5 * math.sqrt(2) * scale / math.sqrt(n)
