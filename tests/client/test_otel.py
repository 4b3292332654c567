"""Apps instrumented with the OpenTelemetry metrics API record through Quietwire."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Generator, Iterable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from client import MemoryTransport, Telemetry, TelemetryConfig
from client._release import TrueCounter, TrueHistogram, Truth
from client.otel import QuietwireMeterProvider
from policies import PILOT_POLICY_PATH, Policy, load_policy
from schemas import AppInfo, Tier
from tests.client.conftest import FakeClock, MemoryIngest

MODEL = "qwen2.5-7b@1.1"
DURATION = "gen_ai.client.operation.duration"
TOKENS = "gen_ai.client.token.usage"
REQUESTS = "inference.requests"
QUEUE = "app.queue.depth"
CACHE_HITS = "app.cache.hits"


def _policy() -> Policy:
    """The pilot policy (local model: one device's truth is released) plus a level
    signal and a count signal for the up-down counters, gauges and observables."""
    data: dict[str, Any] = load_policy(PILOT_POLICY_PATH).model_dump(mode="json")
    data["privacy"]["daily_epsilon"] = 40.0
    data["signals"][QUEUE] = {
        "kind": "histogram",
        "tier": "health",
        "privacy_model": "local",
        "unit": "{item}",
        "attributes": {"route": ["local", "edge", "cloud"]},
        "buckets": [1, 10, 100],
        "max_events_per_window": 100,
        "value_range": [0.0, 1000.0],
        "epsilon": 1.0,
    }
    data["signals"][CACHE_HITS] = {
        "kind": "counter",
        "tier": "health",
        "privacy_model": "local",
        "unit": "{hit}",
        "max_per_window": 100_000,
        "epsilon": 1.0,
    }
    instruments = data["otel"]["instruments"]
    for name in ("app.queue.depth", "app.requests.active", "app.queue.observed"):
        instruments[name] = {
            "signal": QUEUE,
            "attributes": {"route": "route"},
            "units": {"{item}": 1.0, "": 1.0},
        }
    instruments["app.cache.hits"] = {
        "signal": CACHE_HITS,
        "units": {"{hit}": 1.0, "k{hit}": 1000.0},
    }
    return Policy.model_validate(data)


def _config(tmp_path: Path, ingest: MemoryIngest, clock: FakeClock) -> TelemetryConfig:
    return TelemetryConfig(
        app=AppInfo(name="otel-app", version="1.0"),
        region="eu-west",
        policy=_policy(),
        ingest_public_key=ingest.public_key,
        transport=MemoryTransport(ingest.handle),
        state_dir=tmp_path / "state",
        clock=clock,
        mode="manual",
    )


@pytest.fixture
def telemetry(tmp_path: Path, ingest: MemoryIngest, clock: FakeClock) -> Iterator[Telemetry]:
    tel = Telemetry(_config(tmp_path, ingest, clock))
    tel.grant_consent(Tier.HEALTH)
    tel.grant_consent(Tier.PERFORMANCE)
    yield tel
    tel.shutdown(carry_open_window=False, timeout=1.0)


@pytest.fixture
def meter(telemetry: Telemetry) -> metrics.Meter:
    return QuietwireMeterProvider(telemetry, callback_timeout=0.5).get_meter("notes-ai", "3.2")


def _close(telemetry: Telemetry, clock: FakeClock) -> list[Truth]:
    clock.advance(days=1)
    return [t for w in telemetry.collect_with_truth() for t in w.truth]


def _counter(truth: list[Truth], signal: str, **labels: str) -> int:
    found = [t for t in truth if isinstance(t, TrueCounter) and t.signal == signal]
    return sum(t.value for t in found if all(t.attributes[k] == v for k, v in labels.items()))


def _histogram(truth: list[Truth], signal: str, **labels: str) -> tuple[int, float]:
    found = [
        t
        for t in truth
        if isinstance(t, TrueHistogram)
        and t.signal == signal
        and all(t.attributes[k] == v for k, v in labels.items())
    ]
    return sum(sum(t.counts) for t in found), sum(t.sum for t in found)


def test_genai_instruments_record_into_the_policy_signals(
    telemetry: Telemetry, meter: metrics.Meter, clock: FakeClock
) -> None:
    duration = meter.create_histogram(DURATION, unit="ms")
    tokens = meter.create_histogram(TOKENS, unit="{token}")
    requests = meter.create_counter(REQUESTS, unit="{request}")
    call = {"gen_ai.request.model": MODEL, "route": "edge", "gen_ai.operation.name": "chat"}
    for _ in range(3):
        requests.add(1, call)
        duration.record(250, call)  # milliseconds, declared: recorded as 0.25 s
        tokens.record(120, {**call, "gen_ai.token.type": "input"})
        tokens.record(30, {**call, "gen_ai.token.type": "output"})

    truth = _close(telemetry, clock)
    assert _counter(truth, REQUESTS, route="edge", model=MODEL) == 3
    events, seconds = _histogram(truth, DURATION, route="edge", model=MODEL)
    assert events == 3
    assert seconds == pytest.approx(0.75)
    # Input and output tokens share a cell: gen_ai.token.type is declared and ignored.
    assert _histogram(truth, TOKENS, route="edge", model=MODEL) == (6, 450.0)
    assert telemetry.dropped() == {}


def test_what_the_policy_does_not_declare_is_dropped_and_counted(
    telemetry: Telemetry, meter: metrics.Meter, clock: FakeClock
) -> None:
    unknown = meter.create_counter("http.client.requests")
    unknown.add(1, {"route": "edge"})
    unknown.add(2)
    wrong_unit = meter.create_histogram(DURATION, unit="min")
    wrong_unit.record(1.0, {"route": "edge"})
    wrong_kind = meter.create_counter(DURATION, unit="s")
    wrong_kind.add(1)
    requests = meter.create_counter(REQUESTS, unit="{request}")
    requests.add(1, {"route": "edge", "user.email": "a@example.com", "session": "s1"})
    requests.add(1, {"route": "satellite", "gen_ai.request.model": "gpt-x"})

    dropped = telemetry.dropped()
    assert dropped["otel_undeclared_instrument"] == 4
    assert dropped["otel_undeclared_attribute"] == 2  # two attributes, the add kept
    truth = _close(telemetry, clock)
    assert _counter(truth, REQUESTS, route="edge", model="other") == 1
    # Values outside a declared domain count as `other`, as for the client's instruments.
    assert _counter(truth, REQUESTS, route="other", model="other") == 1
    assert _histogram(truth, DURATION) == (0, 0.0)


def test_recording_never_raises(telemetry: Telemetry, meter: metrics.Meter) -> None:
    requests = meter.create_counter(REQUESTS, unit="{request}")
    duration = meter.create_histogram(DURATION, unit="s")
    active = meter.create_up_down_counter("app.requests.active")
    bad_attributes: list[Any] = [["not", "a", "mapping"], {"route": ["a", "list"]}, {1: "x"}]
    for attributes in bad_attributes:
        requests.add(1, attributes)
        duration.record(0.1, attributes)
        active.add(1, attributes)
    for amount in (None, "1", float("nan"), -1, 1.5, True):
        requests.add(amount, {"route": "edge"})  # type: ignore[arg-type]
        duration.record(amount, {"route": "edge"})  # type: ignore[arg-type]
        active.add(amount, {"route": "edge"})  # type: ignore[arg-type]
    requests.add(1, {"route": "x" * 10_000})
    assert telemetry.dropped()["attributes_too_large"] == 1
    assert sum(telemetry.dropped().values()) > 10


class _HashRaises(str):
    def __hash__(self) -> int:
        raise RuntimeError("hash")


def test_an_attribute_whose_hash_raises_never_raises(
    telemetry: Telemetry, meter: metrics.Meter
) -> None:
    requests = meter.create_counter(REQUESTS, unit="{request}")
    duration = meter.create_histogram(DURATION, unit="s")
    active = meter.create_up_down_counter("app.requests.active")
    gauge = meter.create_gauge("app.requests.active.gauge")
    odd = {"route": _HashRaises("edge")}
    requests.add(1, odd)
    duration.record(0.1, odd)
    active.add(1, odd)
    gauge.set(1, odd)


def test_whole_float_amounts_and_whole_unit_factors_count(
    telemetry: Telemetry, meter: metrics.Meter, clock: FakeClock
) -> None:
    meter.create_counter(REQUESTS, unit="{request}").add(2.0, {"route": "local"})
    meter.create_counter(CACHE_HITS, unit="k{hit}").add(3)
    truth = _close(telemetry, clock)
    assert _counter(truth, REQUESTS, route="local") == 2
    assert _counter(truth, CACHE_HITS) == 3000


def test_up_down_counters_and_gauges_are_sampled_once_per_window(
    telemetry: Telemetry, meter: metrics.Meter, clock: FakeClock
) -> None:
    active = meter.create_up_down_counter("app.requests.active")
    depth = meter.create_gauge("app.queue.depth")
    active.add(5, {"route": "local"})
    active.add(-2, {"route": "local"})
    depth.set(40, {"route": "cloud"})
    depth.set(7, {"route": "cloud"})

    truth = _close(telemetry, clock)
    assert _histogram(truth, QUEUE, route="local") == (1, 3.0)
    assert _histogram(truth, QUEUE, route="cloud") == (1, 7.0)
    # Levels persist: the next window samples them again.
    active.add(1, {"route": "local"})
    truth = _close(telemetry, clock)
    assert _histogram(truth, QUEUE, route="local") == (1, 4.0)
    assert _histogram(truth, QUEUE, route="cloud") == (1, 7.0)


def test_observable_callbacks_run_at_window_close_off_the_closing_thread(
    telemetry: Telemetry, meter: metrics.Meter, clock: FakeClock
) -> None:
    threads: list[str] = []
    hits = iter([10, 25, 5])  # cumulative; the last went down: the counter was reset

    def cache_hits(options: CallbackOptions) -> Iterable[Observation]:
        threads.append(threading.current_thread().name)
        return [Observation(next(hits))]

    sent: list[CallbackOptions] = []

    def queue() -> Generator[Iterable[Observation], CallbackOptions, None]:
        options = yield []  # advanced to here on the first poll, then sent the options
        while True:
            sent.append(options)
            options = yield [Observation(12, {"route": "edge"}), Observation(3, {"route": "x"})]

    meter.create_observable_counter(CACHE_HITS, callbacks=[cache_hits], unit="{hit}")
    meter.create_observable_gauge("app.queue.observed", callbacks=[queue()])
    assert threads == []  # nothing runs on the app's thread at creation

    truth = _close(telemetry, clock)
    assert _counter(truth, CACHE_HITS) == 10
    assert _histogram(truth, QUEUE, route="edge") == (1, 12.0)
    assert _histogram(truth, QUEUE, route="other") == (1, 3.0)
    assert threads == ["quietwire-otel-callbacks"]
    assert [o.timeout_millis for o in sent] == [500.0]  # the provider's callback_timeout
    assert _counter(_close(telemetry, clock), CACHE_HITS) == 15
    assert _counter(_close(telemetry, clock), CACHE_HITS) == 5


def test_a_failing_or_hung_callback_is_counted_and_does_not_hold_the_window(
    telemetry: Telemetry, meter: metrics.Meter, clock: FakeClock
) -> None:
    release = threading.Event()

    def broken(options: CallbackOptions) -> Iterable[Observation]:
        raise RuntimeError("the app's bug")

    def hung(options: CallbackOptions) -> Iterable[Observation]:
        release.wait(30)
        return [Observation(1)]

    meter.create_observable_gauge("app.queue.observed", callbacks=[broken])
    meter.create_observable_counter(CACHE_HITS, callbacks=[hung], unit="{hit}")
    try:
        truth = _close(telemetry, clock)
        assert telemetry.dropped()["otel_callback_failed"] == 2
        assert _counter(truth, CACHE_HITS) == 0
        # The hung round still runs: the next window does not start another.
        _close(telemetry, clock)
        assert telemetry.dropped()["otel_callback_failed"] == 4
    finally:
        release.set()


def test_instruments_are_shared_and_meters_cached(telemetry: Telemetry) -> None:
    provider = QuietwireMeterProvider(telemetry)
    meter = provider.get_meter("a")
    assert provider.get_meter("a") is meter
    assert isinstance(meter, metrics.Meter)
    counter = meter.create_counter(REQUESTS, unit="{request}")
    assert isinstance(counter, metrics.Counter)
    assert provider.get_meter("b").create_counter(REQUESTS, unit="{request}") is counter
    assert isinstance(meter.create_histogram(DURATION, unit="s"), metrics.Histogram)
    assert isinstance(meter.create_up_down_counter("app.requests.active"), metrics.UpDownCounter)
    assert isinstance(meter.create_observable_gauge("app.queue.depth"), metrics.ObservableGauge)
    assert isinstance(
        meter.create_observable_up_down_counter("app.queue.depth"),
        metrics.ObservableUpDownCounter,
    )
    assert isinstance(meter.create_observable_counter(CACHE_HITS), metrics.ObservableCounter)


def test_the_provider_needs_the_api_only() -> None:
    code = (
        "import sys, client.otel; "
        "assert not [m for m in sys.modules if m.startswith('opentelemetry.sdk')]"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_shutdown_carries_the_open_window_to_the_next_run(
    telemetry: Telemetry, ingest: MemoryIngest, clock: FakeClock, tmp_path: Path
) -> None:
    provider = QuietwireMeterProvider(telemetry)
    meter = provider.get_meter("x")
    meter.create_counter(REQUESTS, unit="{request}").add(1, {"route": "edge"})

    def cache_hits(_options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(7)]

    meter.create_observable_counter(CACHE_HITS, callbacks=[cache_hits], unit="{hit}")
    clock.advance(hours=1)
    provider.shutdown()
    assert ingest.envelopes == []  # no partial window: the open one is carried
    clock.advance(days=1)
    again = Telemetry(_config(tmp_path, ingest, clock))
    try:
        (window,) = again.collect_with_truth()  # released late, whole
        assert window.envelope.window_end - window.envelope.window_start == timedelta(days=1)
        assert _counter(window.truth, REQUESTS, route="edge") == 1
        assert _counter(window.truth, CACHE_HITS) == 7  # polled at shutdown, then carried
    finally:
        again.shutdown(carry_open_window=False, timeout=1.0)


def test_a_forked_child_records_and_closes_windows(
    telemetry: Telemetry, meter: metrics.Meter, clock: FakeClock
) -> None:
    active = meter.create_up_down_counter("app.requests.active")
    active.add(2, {"route": "edge"})
    held = threading.Event()
    release = threading.Event()

    level = active._cache[(("route", "edge"),)]  # type: ignore[attr-defined]

    def hold_the_level_lock() -> None:  # another thread of the parent, mid-record
        with level._lock:
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold_the_level_lock, daemon=True)
    holder.start()
    held.wait(10)
    pid = os.fork()
    if pid == 0:  # the child: the lock its parent's thread held must not block it
        code = 1
        try:
            # A child that hangs is killed (pytest-timeout's handler is the parent's).
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
            signal.alarm(20)
            active.add(1, {"route": "edge"})
            # The window close samples the level (the child's releases are refused:
            # the parent holds the privacy ledger).
            _close(telemetry, clock)
            code = 0 if level.read() == 3.0 else 2
        finally:
            os._exit(code)
    release.set()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
