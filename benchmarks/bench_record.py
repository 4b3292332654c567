"""Cost of recording one measurement: Quietwire's client vs prometheus_client vs OTel SDK.

Each library does the same work in the same process: a counter add with two
attributes (route and model) and a histogram record with the same attributes, plus
each library's pre-bound fast path. Timings are timeit-style: `NUMBER` calls per
repeat, the best of `REPEATS` repeats (the least disturbed by other load), in ns/call.

Targets (issue: end-to-end pipeline): our labelled add no slower than prometheus'
labelled inc, and at least 4x faster than the OpenTelemetry SDK's add.
"""

from __future__ import annotations

import tempfile
import timeit
from collections.abc import Callable
from pathlib import Path

from nacl.public import PrivateKey
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry
from prometheus_client import Counter as PromCounter
from prometheus_client import Histogram as PromHistogram

from client import MemoryTransport, Telemetry, TelemetryConfig
from schemas import AppInfo, BatchResult, EnvelopeBatch

NUMBER = 100_000
REPEATS = 7
ROUTE, MODEL = "local", "qwen2.5-7b@1.1"


def _ns_per_call(fn: Callable[[], object]) -> float:
    best = min(timeit.repeat(fn, number=NUMBER, repeat=REPEATS))
    return best / NUMBER * 1e9


def _quietwire(state_dir: Path) -> dict[str, Callable[[], object]]:
    def accept(batch: EnvelopeBatch) -> BatchResult:
        n = len(batch.envelopes)
        return BatchResult(accepted=n, rejected=0, results=[])

    telemetry = Telemetry(
        TelemetryConfig(
            app=AppInfo(name="bench", version="1"),
            region="bench",
            ingest_public_key=bytes(PrivateKey.generate().public_key),
            transport=MemoryTransport(accept),
            state_dir=state_dir,
            mode="manual",
        )
    )
    counter = telemetry.counter("inference.requests")
    histogram = telemetry.histogram("gen_ai.client.operation.duration")
    bound_counter = counter.bind(route=ROUTE, model=MODEL)
    bound_histogram = histogram.bind(route=ROUTE, model=MODEL)
    return {
        "counter": lambda: counter.add(1, route=ROUTE, model=MODEL),
        "histogram": lambda: histogram.record(0.42, route=ROUTE, model=MODEL),
        "counter bound": lambda: bound_counter.add(1),
        "histogram bound": lambda: bound_histogram.record(0.42),
    }


def _prometheus() -> dict[str, Callable[[], object]]:
    registry = CollectorRegistry()
    counter = PromCounter("requests", "requests", ["route", "model"], registry=registry)
    histogram = PromHistogram("latency", "latency", ["route", "model"], registry=registry)
    bound_counter = counter.labels(route=ROUTE, model=MODEL)
    bound_histogram = histogram.labels(route=ROUTE, model=MODEL)
    return {
        "counter": lambda: counter.labels(route=ROUTE, model=MODEL).inc(),
        "histogram": lambda: histogram.labels(route=ROUTE, model=MODEL).observe(0.42),
        "counter bound": lambda: bound_counter.inc(),
        "histogram bound": lambda: bound_histogram.observe(0.42),
    }


def _otel() -> dict[str, Callable[[], object]]:
    provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    meter = provider.get_meter("bench")
    counter = meter.create_counter("requests")
    histogram = meter.create_histogram("latency")
    attributes = {"route": ROUTE, "model": MODEL}
    # OTel has no bound instruments; the attribute dict is built once, as callers would.
    return {
        "counter": lambda: counter.add(1, attributes),
        "histogram": lambda: histogram.record(0.42, attributes),
    }


def main() -> int:
    """Print ns/call and ratios; return 1 if a target is missed."""
    with tempfile.TemporaryDirectory() as tmp:
        suites = {
            "quietwire": _quietwire(Path(tmp)),
            "prometheus": _prometheus(),
            "otel-sdk": _otel(),
        }
        results = {
            (lib, op): _ns_per_call(fn) for lib, ops in suites.items() for op, fn in ops.items()
        }
    ops = ["counter", "histogram", "counter bound", "histogram bound"]
    print(f"{'ns/call':<18}" + "".join(f"{lib:>12}" for lib in suites))
    for op in ops:
        cells = "".join(
            f"{results[(lib, op)]:>12.0f}" if (lib, op) in results else f"{'-':>12}"
            for lib in suites
        )
        print(f"{op:<18}{cells}")
    ours = results[("quietwire", "counter")]
    vs_prom = results[("prometheus", "counter")] / ours
    vs_otel = results[("otel-sdk", "counter")] / ours
    hist_prom = results[("prometheus", "histogram")] / results[("quietwire", "histogram")]
    hist_otel = results[("otel-sdk", "histogram")] / results[("quietwire", "histogram")]
    print(f"labelled counter add: {vs_prom:.1f}x faster than prometheus, {vs_otel:.1f}x than OTel")
    print(
        f"labelled histogram:   {hist_prom:.1f}x faster than prometheus, {hist_otel:.1f}x than OTel"
    )
    met = vs_prom >= 1.0 and vs_otel >= 4.0
    print("target (>= 1x prometheus, >= 4x OTel on labelled add):", "met" if met else "MISSED")
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
