"""An AI notes app instrumented with the OpenTelemetry metrics API, sending through Quietwire.

Everything above `install_quietwire` is the app as it was: it records with the
OpenTelemetry API only, following the GenAI semantic conventions, and creates its
instruments at import time, before any provider is set (the API's proxy instruments
then forward to the provider installed later). Switching the app to Quietwire is the
set-up in `install_quietwire`: a `Telemetry` client, the user's consent, and
`metrics.set_meter_provider(QuietwireMeterProvider(telemetry))`. The policy's `otel`
section maps the instruments onto its signals; `app.ui.clicks`, which it does not map,
is dropped on the device and counted.

    python examples/otel_app.py --endpoint https://ingest.example --ingest-key KEY \\
        --state-dir ~/.local/state/notes-ai/telemetry [--policy policies/pilot.yaml]

tests/integration/test_otel_app.py runs it against the real ingest and warehouse.
"""

from __future__ import annotations

import argparse
import base64
import json
import random
from pathlib import Path
from typing import TYPE_CHECKING

from opentelemetry import metrics

if TYPE_CHECKING:
    from client import Telemetry
    from client.otel import QuietwireMeterProvider

# -- the app, written against the OpenTelemetry API only ------------------------------

meter = metrics.get_meter("notes-ai", "3.2.0")
operation_duration = meter.create_histogram(
    "gen_ai.client.operation.duration", unit="s", description="GenAI operation duration"
)
token_usage = meter.create_histogram(
    "gen_ai.client.token.usage", unit="{token}", description="Tokens used per operation"
)
requests = meter.create_counter("inference.requests", unit="{request}")
errors = meter.create_counter("inference.errors", unit="{error}")
clicks = meter.create_counter("app.ui.clicks")  # not in the policy: dropped, counted

MODELS = ("qwen2.5-7b@1.0", "qwen2.5-7b@1.1")
ROUTES = ("local", "edge", "cloud")
_MEDIAN_S = {"local": 0.8, "edge": 0.35, "cloud": 1.2}


def answer(prompt: str, rng: random.Random) -> None:
    """One inference: routed, timed and metered the way GenAI instrumentation does."""
    route = rng.choices(ROUTES, weights=(4, 2, 3))[0]
    model = MODELS[rng.random() < 0.25]
    attributes = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "notes-ai",
        "gen_ai.request.model": model,
        "route": route,
    }
    seconds = rng.lognormvariate(0.0, 0.5) * _MEDIAN_S[route]
    requests.add(1, attributes)
    operation_duration.record(seconds, attributes)
    input_tokens = len(prompt.split()) * 4 + rng.randint(50, 400)
    token_usage.record(input_tokens, {**attributes, "gen_ai.token.type": "input"})
    token_usage.record(rng.randint(20, 600), {**attributes, "gen_ai.token.type": "output"})
    if rng.random() < 0.02:
        errors.add(1, {"route": route, "error.type": "timeout"})
    clicks.add(1, {"button": "send"})


def run(prompts: int, seed: int = 1) -> None:
    rng = random.Random(seed)
    for i in range(prompts):
        answer(f"summarise note {i} for me please", rng)


# -- the set-up that installs Quietwire --------------------------------------------


def install_quietwire(
    endpoint: str, ingest_key: bytes, state_dir: Path, policy_path: Path | None
) -> tuple[QuietwireMeterProvider, Telemetry]:
    from client import Telemetry, TelemetryConfig
    from client.otel import QuietwireMeterProvider
    from policies import load_policy
    from schemas import AppInfo

    telemetry = Telemetry(
        TelemetryConfig(
            app=AppInfo(name="notes-ai", version="3.2.0"),
            region="eu",
            endpoint=endpoint,
            ingest_public_key=ingest_key,
            state_dir=state_dir,
            policy=load_policy(policy_path) if policy_path else load_policy(),
        )
    )
    telemetry.grant_consent("health")  # the user agreed, in the app's settings
    telemetry.grant_consent("performance")
    # The device's state loads on Quietwire's thread; what is recorded before that is
    # dropped (no consent is known yet). This script records at once, so it waits; an
    # app with a UI would not wait on its UI thread.
    telemetry.ready(timeout=10.0)
    provider = QuietwireMeterProvider(telemetry)
    metrics.set_meter_provider(provider)
    return provider, telemetry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--ingest-key", required=True, help="the ingest's X25519 key, base64")
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--policy", type=Path, default=None)
    parser.add_argument("--prompts", type=int, default=200)
    args = parser.parse_args(argv)
    provider, telemetry = install_quietwire(
        args.endpoint, base64.b64decode(args.ingest_key), args.state_dir, args.policy
    )
    run(args.prompts)
    # The app's exit (also done at exit): windows that ended are released and sent; the
    # open one (today's, under a one-day policy) is carried to the app's next start,
    # which releases it whole once it has ended.
    provider.shutdown()
    print(json.dumps({"dropped": telemetry.dropped(), "pending": telemetry.pending}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
