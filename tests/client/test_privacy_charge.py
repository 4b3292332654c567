"""Each release is charged its worst-case privacy loss, the composition of what it
releases: over every pair of small windows, through the client's own clamping and
OpenDP's own privacy maps, the largest loss equals the charge (issue 9, item 8)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from client import MemoryTransport, Telemetry, TelemetryConfig
from client._aggregation import HistogramSnapshot
from client._domain import CellDomain
from client._loss import release_loss
from client._release import (
    TrueCounter,
    TrueHistogram,
    TrueTotal,
    counter_measurement,
    epsilon_split,
    release_counter,
    release_histogram,
    sum_measurement,
)
from policies import CounterSignal, HistogramSignal, release_epsilon, window_charge
from schemas import AppInfo, CounterAggregate, HistogramAggregate, Tier, TotalAggregate
from tests.client.conftest import POLICY, FakeClock, MemoryIngest

MECHANISMS = POLICY.privacy.mechanisms
TOLERANCE = 1e-12  # OpenDP rounds each map up to a float; the charge is exact


def _counter(total_share: float, attributes: dict[str, list[str]]) -> CounterSignal:
    return CounterSignal(
        privacy_model="local",
        tier=Tier.HEALTH,
        attributes=attributes,
        max_per_window=3,
        epsilon=0.5,
        total_share=total_share,
    )


def _histogram(
    total_share: float, attributes: dict[str, list[str]], value_range: tuple[float, float]
) -> HistogramSignal:
    return HistogramSignal(
        privacy_model="local",
        tier=Tier.PERFORMANCE,
        attributes=attributes,
        buckets=[1.0],
        max_events_per_window=2,
        value_range=value_range,
        epsilon=1.0,
        sum_share=0.4,
        total_share=total_share,
    )


def _cached_map(measurement: Any) -> Callable[[float | int], float]:
    cache: dict[float | int, float] = {}

    def privacy_map(d: float | int) -> float:
        if d not in cache:
            cache[d] = float(measurement.map(d))
        return cache[d]

    return privacy_map


def _worst_pair(parts: list[tuple[Callable[[Any], float], list[Any]]]) -> float:
    """The largest composed loss over every pair of windows: each part a privacy map
    and, per window, the value (vector or scalar) that part releases."""
    n = len(parts[0][1])
    worst = 0.0
    for i, j in itertools.combinations(range(n), 2):
        loss = 0.0
        for privacy_map, values in parts:
            a, b = values[i], values[j]
            if isinstance(a, list):
                d = sum(abs(x - y) for x, y in zip(a, b, strict=True))
            else:
                d = abs(a - b)
            loss += privacy_map(d)
        worst = max(worst, loss)
    return worst


def test_a_total_share_is_charged_its_loss_not_its_rounded_up_share() -> None:
    signal = _counter(0.5, {"route": ["local", "cloud"]})
    # Cells at 0.25 for a diameter of 6, total at 0.25 for a diameter of 3: a full
    # window against an empty one costs 0.125 + 0.25, two full ones in different
    # cells 0.25 + 0. Not 0.5.
    assert release_epsilon(signal) == Decimal("0.375")
    assert release_loss(signal, MECHANISMS) == 0.375


@pytest.mark.parametrize("total_share", [0.0, 0.2, 0.5, 0.8])
@pytest.mark.parametrize("attributes", [{}, {"route": ["local", "cloud"]}])
def test_a_counters_charge_is_its_worst_pair_of_windows(
    total_share: float, attributes: dict[str, list[str]]
) -> None:
    signal = _counter(total_share, attributes)
    domain = CellDomain(attributes)
    bound = signal.max_per_window
    split = epsilon_split(signal)
    cells: list[list[int]] = []
    totals: list[float] = []
    # Every window of the domain up to one over the bound (the clamp scales it down).
    for raw in itertools.product(range(bound + 2), repeat=domain.size):
        release = release_counter("c", signal, domain, list(raw), MECHANISMS.counter)
        cells.append([t.value for t in release.truth if isinstance(t, TrueCounter)])
        totals += [t.value for t in release.truth if isinstance(t, TrueTotal)]
        # The measurements below are the ones this release drew from.
        cell_noise = release.aggregates[0]
        assert isinstance(cell_noise, CounterAggregate)
        assert cell_noise.noise.scale == counter_measurement(domain.size, 2 * bound, split.cells)[1]
    parts: list[tuple[Callable[[Any], float], list[Any]]] = [
        (_cached_map(counter_measurement(domain.size, 2 * bound, split.cells)[0]), cells)
    ]
    if split.total > 0.0:
        total = counter_measurement(1, bound, split.total)[0]
        parts.append((_cached_map(total), [int(t) for t in totals]))
    worst = _worst_pair(parts)
    charge = float(release_epsilon(signal))
    # Equal, to the last bits OpenDP's maps round up (its map at half a diameter).
    assert worst <= charge * (1 + TOLERANCE)
    assert worst == pytest.approx(charge, rel=TOLERANCE)
    assert release_loss(signal, MECHANISMS) == pytest.approx(worst, rel=TOLERANCE)


def _windows(
    values: list[float], cells: int, buckets: list[float]
) -> Iterator[list[HistogramSnapshot]]:
    """Every window of up to three events (one over the bound) over the cells and values."""
    kinds = [(c, v) for c in range(cells) for v in values]
    for size in range(4):
        for events in itertools.combinations_with_replacement(kinds, size):
            snaps = [HistogramSnapshot([0] * (len(buckets) + 1), 0.0) for _ in range(cells)]
            for cell, value in events:
                bucket = sum(1 for b in buckets if value >= b)
                snaps[cell].counts[bucket] += 1
                snaps[cell] = HistogramSnapshot(snaps[cell].counts, snaps[cell].total + value)
            yield snaps


@pytest.mark.parametrize(
    ("value_range", "values", "exact"),
    [
        ((0.0, 2.0), [0.0, 0.5, 1.5, 2.0], True),
        ((-2.0, 2.0), [-2.0, 0.0, 0.5, 2.0], True),
        # Asymmetric signs: no window reaches minus the sum cap, so the charge is an
        # upper bound of the loss (the safe direction), not equal to it.
        ((-1.0, 2.0), [-1.0, 0.0, 0.5, 2.0], False),
    ],
)
@pytest.mark.parametrize("total_share", [0.0, 0.5])
@pytest.mark.parametrize("attributes", [{}, {"route": ["local"]}])
def test_a_histograms_charge_is_its_worst_pair_of_windows(
    value_range: tuple[float, float],
    values: list[float],
    exact: bool,
    total_share: float,
    attributes: dict[str, list[str]],
) -> None:
    signal = _histogram(total_share, attributes, value_range)
    domain = CellDomain(attributes)
    n, cap = signal.max_events_per_window, signal.sum_cap
    lo, hi = value_range
    width = (cap if hi > 0 else 0.0) - (-cap if lo < 0 else 0.0)
    split = epsilon_split(signal)
    counts: list[list[int]] = []
    sums: list[list[float]] = []
    t_counts: list[int] = []
    t_sums: list[float] = []
    for snaps in _windows(values, domain.size, signal.buckets):
        release = release_histogram("h", signal, domain, snaps)
        cells = [t for t in release.truth if isinstance(t, TrueHistogram)]
        counts.append([c for t in cells for c in t.counts])
        sums.append([t.sum for t in cells])
        totals = {t.measure: t.value for t in release.truth if isinstance(t, TrueTotal)}
        if totals:
            t_counts.append(int(totals["count"]))
            t_sums.append(totals["sum"])
        first = release.aggregates[0]
        assert isinstance(first, HistogramAggregate)
        assert first.sum_noise is not None
        assert first.sum_noise.scale == sum_measurement(domain.size, 2 * cap, split.sums)[1]
        if totals:
            total_sum = release.aggregates[-1]
            assert isinstance(total_sum, TotalAggregate)
            assert total_sum.noise.scale == sum_measurement(1, width, split.total_sum)[1]
    buckets = len(signal.buckets) + 1
    parts: list[tuple[Callable[[Any], float], list[Any]]] = [
        (_cached_map(counter_measurement(domain.size * buckets, 2 * n, split.cells)[0]), counts),
        (_cached_map(sum_measurement(domain.size, 2 * cap, split.sums)[0]), sums),
    ]
    if split.total > 0.0:
        parts += [
            (_cached_map(counter_measurement(1, n, split.total)[0]), t_counts),
            (_cached_map(sum_measurement(1, width, split.total_sum)[0]), t_sums),
        ]
    worst = _worst_pair(parts)
    charge = float(release_epsilon(signal))
    assert worst <= charge * (1 + TOLERANCE)
    assert release_loss(signal, MECHANISMS) <= charge * (1 + TOLERANCE)
    if exact:
        assert worst == pytest.approx(charge, rel=TOLERANCE)
        assert release_loss(signal, MECHANISMS) == pytest.approx(worst, rel=TOLERANCE)


def test_the_ledger_is_charged_the_loss_and_the_ingest_prices_it_alike(
    tmp_path: Path, clock: FakeClock, ingest: MemoryIngest
) -> None:
    with_total = _counter(0.5, {"route": ["local", "cloud"]})
    policy = POLICY.model_copy(update={"signals": {"requests.total": with_total}})
    qw = Telemetry(
        TelemetryConfig(
            app=AppInfo(name="demo-app", version="1.0"),
            region="eu-west",
            policy=policy,
            ingest_public_key=ingest.public_key,
            transport=MemoryTransport(ingest.handle),
            state_dir=tmp_path / "state",
            clock=clock,
            mode="manual",
        )
    )
    qw.grant_consent(Tier.HEALTH)
    windows = 5
    for _ in range(windows):
        qw.counter("requests.total").add(2, route="cloud")
        (envelope,) = qw.collect(clock.advance(hours=1))
        assert {a.signal for a in envelope.aggregates} == {"requests.total"}
        assert len(envelope.aggregates) == 4  # three cells and the total
    assert qw.privacy_spent()[0] == windows * 0.375
    assert math.isclose(float(window_charge(policy, ["requests.total"])), 0.375)
    qw.shutdown(carry_open_window=False)
