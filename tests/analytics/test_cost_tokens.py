"""Tokens per request from the client's recordings to the cost model, on both paths.

10 cloud requests of 300 input and 200 output tokens, recorded by the real client with
the default policy: through the OpenTelemetry provider as the GenAI conventions do (one
event per token type, `gen_ai.token.type` ignored by the mapping) and through the
client's own API as the fleet simulator does (one event per request). Each device's
window truth (the clamped values its Prio3 reports share) is what the aggregators add;
it goes into the warehouse as two batches' entries (noise drawn at a scale so small
that every draw is 0), and the cost model must read 500 tokens per request either way.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import duckdb
import pytest

from analytics._cost import cost_breakdown
from client import MemoryTransport, Telemetry, TelemetryConfig
from client._release import TrueCounter, TrueHistogram, TrueTotal, Truth
from client.otel import QuietwireMeterProvider
from policies import Policy, aggregation_tasks, load_policy
from schemas import AppInfo, Tier
from tests.analytics._aggregates import AggregateTruth, Batch, Entry, insert_batches
from tests.client.conftest import T0, FakeClock, MemoryIngest
from warehouse import apply_schema

_MODEL = "qwen2.5-7b@1.0"
_REQUESTS = 10
_ATTRIBUTES = {"gen_ai.request.model": _MODEL, "route": "cloud"}
_TINY = 1e-6  # P(a draw is not 0) = 2 exp(-1/scale): nothing


def _with_otel(qw: Telemetry) -> None:
    meter = QuietwireMeterProvider(qw).get_meter("app")
    requests = meter.create_counter("inference.requests", unit="{request}")
    tokens = meter.create_histogram("gen_ai.client.token.usage", unit="{token}")
    for _ in range(_REQUESTS):
        requests.add(1, _ATTRIBUTES)
        tokens.record(300, {**_ATTRIBUTES, "gen_ai.token.type": "input"})
        tokens.record(200, {**_ATTRIBUTES, "gen_ai.token.type": "output"})


def _with_client_api(qw: Telemetry) -> None:
    requests = qw.counter("inference.requests")
    tokens = qw.histogram("gen_ai.client.token.usage")
    for _ in range(_REQUESTS):
        requests.add(1, route="cloud", model=_MODEL)
        tokens.record(500, route="cloud", model=_MODEL)


def _window_truth(policy: Policy, record: Callable[[Telemetry], None]) -> list[Truth]:
    ingest, clock = MemoryIngest(), FakeClock(T0)
    with tempfile.TemporaryDirectory() as state:
        qw = Telemetry(
            TelemetryConfig(
                app=AppInfo(name="a", version="1"),
                region="eu",
                policy=policy,
                ingest_public_key=ingest.public_key,
                transport=MemoryTransport(ingest.handle),
                state_dir=Path(state),
                clock=clock,
                mode="manual",
                retry_backoff=0.0,
            )
        )
        try:
            qw.grant_consent(Tier.PERFORMANCE)
            record(qw)
            (window,) = qw.collect_with_truth(clock.advance(days=1, seconds=5))
        finally:
            qw.shutdown(carry_open_window=False, timeout=1.0)
    return list(window.truth)


def _batches(policy: Policy, truth: list[Truth]) -> list[Batch]:
    """The truth as the aggregators reveal it: cells, per-cell counts and sums, totals."""
    tasks = aggregation_tasks(policy)
    by_part: dict[tuple[str, str], list[Entry]] = {}

    def add(signal: str, part: str, entry: Entry) -> None:
        by_part.setdefault((signal, part), []).append(entry)

    for item in truth:
        if isinstance(item, TrueCounter):
            add(item.signal, "cells", Entry("counter", item.attributes, item.value))
        elif isinstance(item, TrueHistogram):
            add(item.signal, "counts", Entry("count", item.attributes, sum(item.counts)))
            add(item.signal, "sums", Entry("sum", item.attributes, round(item.sum)))
        elif isinstance(item, TrueTotal):
            if policy.signals[item.signal].kind == "counter":
                part = "total"
            else:
                part = "total_events" if item.measure == "count" else "total_sum"
            kind = "total" if item.measure == "count" else "total_sum"
            add(item.signal, part, Entry(kind, {}, round(item.value)))
    return [
        Batch(signal, part, 0, entries, _TINY, reports=1)
        for (signal, part), entries in by_part.items()
        if f"{signal}/{part}" in tasks
    ]


@pytest.fixture
def policy() -> Policy:
    return load_policy()


@pytest.fixture
def conn() -> Iterator[duckdb.DuckDBPyConnection]:
    c = duckdb.connect()
    apply_schema(c)
    yield c
    c.close()


@pytest.mark.parametrize("record", [_with_otel, _with_client_api], ids=["otel", "client_api"])
def test_500_tokens_per_request_on_both_recording_paths(
    policy: Policy,
    conn: duckdb.DuckDBPyConnection,
    record: Callable[[Telemetry], None],
) -> None:
    truth = _window_truth(policy, record)
    cloud = [
        t
        for t in truth
        if isinstance(t, TrueHistogram)
        and t.signal == "gen_ai.client.token.usage"
        and t.attributes == {"route": "cloud", "model": _MODEL}
    ]
    events = sum(cloud[0].counts)
    assert events == (2 * _REQUESTS if record is _with_otel else _REQUESTS)
    insert_batches(conn, _batches(policy, truth), AggregateTruth())
    assert policy.cost is not None
    rows = cost_breakdown(conn, policy.cost, level=0.9).iter_rows(named=True)
    (row,) = [r for r in rows if (r["route"], r["model"]) == ("cloud", _MODEL)]
    assert row["requests"] == pytest.approx(_REQUESTS)
    assert row["tokens_per_inference"] == pytest.approx(500.0)
    per_1k = policy.cost.cloud[_MODEL].per_1k_tokens
    assert row["cost_per_inference"] == pytest.approx(per_1k * 500.0 / 1000.0)
    assert row["cost"] == pytest.approx(_REQUESTS * per_1k * 500.0 / 1000.0)
