"""Recording through the OpenTelemetry API: Quietwire's provider vs the OTel SDK's.

The same app code runs against two `MeterProvider`s in one process: the OpenTelemetry
SDK's (with an in-memory reader, its cheapest complete set-up) and Quietwire's
(`client.otel`, manual mode, in-memory transport). Each makes the same calls with the
same GenAI attributes: a counter add, a histogram record (in ms, which the policy
converts to s), an up-down counter add. Timings are timeit-style: `NUMBER` calls per
repeat, the best of `REPEATS` (the least disturbed by other load), in ns/call.

Target (issue 11): through the API, Quietwire costs no more than the SDK on each call.
"""

from __future__ import annotations

import tempfile
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nacl.public import PrivateKey
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from client import MemoryTransport, Telemetry, TelemetryConfig
from client.otel import QuietwireMeterProvider
from policies import PILOT_POLICY_PATH, Policy, load_policy
from schemas import AppInfo, BatchResult, EnvelopeBatch

NUMBER = 100_000
REPEATS = 7
ATTRIBUTES = {"gen_ai.request.model": "qwen2.5-7b@1.1", "route": "local"}
ACTIVE = "app.requests.active"
OPS = ("counter add", "histogram record", "up-down counter add")


def _ns_per_call(fn: Callable[[], object]) -> float:
    best = min(timeit.repeat(fn, number=NUMBER, repeat=REPEATS))
    return best / NUMBER * 1e9


def _calls(meter: metrics.Meter) -> dict[str, Callable[[], object]]:
    """The app's recording calls, written against the API only."""
    requests = meter.create_counter("inference.requests", unit="{request}")
    duration = meter.create_histogram("gen_ai.client.operation.duration", unit="ms")
    active = meter.create_up_down_counter(ACTIVE, unit="{request}")
    attributes = ATTRIBUTES  # built once, as instrumented apps do
    return {
        "counter add": lambda: requests.add(1, attributes),
        "histogram record": lambda: duration.record(420.0, attributes),
        "up-down counter add": lambda: active.add(1, attributes),
    }


def _policy() -> Policy:
    """The pilot policy, whose otel section also maps an up-down counter of requests
    in flight onto the latency signal's labels (a level needs a histogram signal)."""
    data: dict[str, Any] = load_policy(PILOT_POLICY_PATH).model_dump(mode="json")
    data["otel"]["instruments"][ACTIVE] = {
        "signal": "gen_ai.client.operation.duration",
        "attributes": {"gen_ai.request.model": "model", "route": "route"},
        "units": {"{request}": 1.0},
    }
    return Policy.model_validate(data)


def _quietwire(state_dir: Path) -> tuple[QuietwireMeterProvider, Telemetry]:
    def accept(batch: EnvelopeBatch) -> BatchResult:
        return BatchResult(accepted=len(batch.envelopes), rejected=0, results=[])

    telemetry = Telemetry(
        TelemetryConfig(
            app=AppInfo(name="bench", version="1"),
            region="bench",
            policy=_policy(),
            ingest_public_key=bytes(PrivateKey.generate().public_key),
            transport=MemoryTransport(accept),
            state_dir=state_dir,
            mode="manual",
        )
    )
    return QuietwireMeterProvider(telemetry), telemetry


def main() -> int:
    """Print ns/call and the ratio per call; return 1 if Quietwire is slower on any."""
    sdk = SdkMeterProvider(metric_readers=[InMemoryMetricReader()])
    with tempfile.TemporaryDirectory() as tmp:
        provider, telemetry = _quietwire(Path(tmp))
        suites = {
            "quietwire": _calls(provider.get_meter("bench")),
            "otel-sdk": _calls(sdk.get_meter("bench")),
        }
        results = {
            (lib, op): _ns_per_call(fn) for lib, ops in suites.items() for op, fn in ops.items()
        }
        dropped = telemetry.dropped()
        telemetry.shutdown(carry_open_window=False, timeout=1.0)
    sdk.shutdown()
    print(f"{'ns/call via the API':<22}{'quietwire':>12}{'otel-sdk':>12}{'sdk/ours':>10}")
    ratios = {}
    for op in OPS:
        ours, theirs = results[("quietwire", op)], results[("otel-sdk", op)]
        ratios[op] = theirs / ours
        print(f"{op:<22}{ours:>12.0f}{theirs:>12.0f}{ratios[op]:>9.1f}x")
    if dropped:
        print("quietwire dropped (the benchmark's calls must all be declared):", dropped)
    met = all(r >= 1.0 for r in ratios.values()) and not dropped
    print("target (no call slower than the SDK's, nothing dropped):", "met" if met else "MISSED")
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
