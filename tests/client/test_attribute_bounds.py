"""Attribute sizes are bounded: oversized attribute sets are dropped and counted."""

from __future__ import annotations

from client import Telemetry, TrueCounter, TrueHistogram
from client._instruments import (
    MAX_ATTRIBUTE_KEY_CHARS,
    MAX_ATTRIBUTE_VALUE_CHARS,
    MAX_ATTRIBUTES,
)
from client._release import Truth
from tests.client.conftest import FakeClock, MakeTelemetry


def _truth(telemetry: Telemetry, clock: FakeClock) -> list[Truth]:
    (window,) = telemetry.collect_with_truth(clock.advance(hours=1))
    return window.truth


def _requests_total(truth: list[Truth]) -> int:
    return sum(
        t.value for t in truth if isinstance(t, TrueCounter) and t.signal == "inference.requests"
    )


def _latency_events(truth: list[Truth]) -> int:
    return sum(sum(t.counts) for t in truth if isinstance(t, TrueHistogram))


def test_oversized_attribute_sets_are_dropped_and_counted(
    make_telemetry: MakeTelemetry, clock: FakeClock
) -> None:
    qw = make_telemetry()
    requests = qw.counter("inference.requests")
    many = {f"label{i}": "x" for i in range(MAX_ATTRIBUTES + 1)}
    requests.add(1, **many)
    requests.add(1, route="local" + "x" * MAX_ATTRIBUTE_VALUE_CHARS)
    requests.add(1, **{"k" * (MAX_ATTRIBUTE_KEY_CHARS + 1): "local"})
    qw.histogram("latency").record(0.5, route="p" * (MAX_ATTRIBUTE_VALUE_CHARS + 1))
    # A pasted document as a value, many times: each call counted, none cached.
    document = "lorem ipsum " * 100_000
    for _ in range(3):
        requests.add(1, route=document)
    truth = _truth(qw, clock)
    assert _requests_total(truth) == 0
    assert _latency_events(truth) == 0
    assert qw.dropped() == {"attributes_too_large": 7}


def test_attributes_at_the_bounds_are_recorded(
    make_telemetry: MakeTelemetry, clock: FakeClock
) -> None:
    qw = make_telemetry()
    requests = qw.counter("inference.requests")
    at_limit = {f"label{i}": "x" for i in range(MAX_ATTRIBUTES - 1)}
    requests.add(1, route="local", **at_limit)  # undeclared labels, counted as such
    requests.add(1, route="v" * MAX_ATTRIBUTE_VALUE_CHARS)  # recorded under `other`
    requests.add(1, **{"k" * MAX_ATTRIBUTE_KEY_CHARS: "local"})
    truth = _truth(qw, clock)
    assert _requests_total(truth) == 3
    assert qw.dropped() == {"undeclared_label": MAX_ATTRIBUTES}


def test_a_bound_handle_with_oversized_attributes_counts_once_and_releases_nothing(
    make_telemetry: MakeTelemetry, clock: FakeClock
) -> None:
    qw = make_telemetry()
    bound = qw.counter("inference.requests").bind(route="r" * (MAX_ATTRIBUTE_VALUE_CHARS + 1))
    hist = qw.histogram("latency").bind(route="r" * (MAX_ATTRIBUTE_VALUE_CHARS + 1))
    for _ in range(5):
        bound.add(1)
        hist.record(0.5)
    truth = _truth(qw, clock)
    assert _requests_total(truth) == 0
    assert _latency_events(truth) == 0
    assert qw.dropped() == {"attributes_too_large": 2}
