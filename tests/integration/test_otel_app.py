"""The OpenTelemetry-instrumented example app, through the real pipeline into the report.

The app (examples/otel_app.py) runs in its own process, as a user's would: it records
with the OpenTelemetry API only, and its set-up installs Quietwire's provider globally
(`metrics.set_meter_provider`). It sends over HTTP to the real ingest (uvicorn on
loopback, the embedded DuckDB sink, as the fleet simulator runs it); the analytics
report built on the warehouse shows its signals. The pilot policy (local model) lets
one device's releases through; the default's aggregate model needs 100 devices.

A device releases whole policy windows only (one day under the pilot policy), so the
app's exit carries the day's window to its next start; the test then plays that next
start a day later (the ingest's clock moved on with it), on the same state directory,
which releases the window, late and whole.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from analytics import build_report, open_warehouse, render_json
from client import Telemetry, TelemetryConfig
from fleetsim._pipeline import _serve
from ingest import IngestSettings
from policies import PILOT_POLICY_PATH, load_policy
from schemas import AppInfo

EXAMPLE = Path(__file__).parents[2] / "examples" / "otel_app.py"
PROMPTS = 300
SIGNALS = ("inference.requests", "gen_ai.client.operation.duration", "gen_ai.client.token.usage")


def test_the_otel_example_app_appears_in_the_report(tmp_path: Path) -> None:
    policy = load_policy(PILOT_POLICY_PATH)
    db = tmp_path / "warehouse.duckdb"
    settings = IngestSettings(
        region="eu",
        state_dir=tmp_path / "ingest",
        warehouse_path=db,
        known_policy_hashes=frozenset({policy.content_hash}),
        policy_paths=(PILOT_POLICY_PATH,),
    )
    later = timedelta(0)  # how far the next start is after the app's run

    def clock() -> datetime:
        return datetime.now(UTC) + later

    with _serve(settings, clock) as base:
        key = httpx.get(f"{base}/v1/ingest-key", timeout=10).json()["public_key"]
        app = subprocess.run(
            [
                sys.executable,
                str(EXAMPLE),
                "--endpoint",
                base,
                "--ingest-key",
                key,
                "--state-dir",
                str(tmp_path / "device"),
                "--policy",
                str(PILOT_POLICY_PATH),
                "--prompts",
                str(PROMPTS),
            ],
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
        assert app.returncode == 0, app.stderr
        assert (tmp_path / "device" / "spool" / "open_window.sealed").exists()  # carried
        later = timedelta(days=1)
        next_start = Telemetry(
            TelemetryConfig(
                app=AppInfo(name="notes-ai", version="3.2.0"),
                region="eu",
                endpoint=base,
                ingest_public_key=base64.b64decode(key),
                state_dir=tmp_path / "device",
                policy=policy,
                clock=clock,
                mode="manual",
            )
        )
        try:
            (window,) = next_start.collect()  # the app's day, released late
            assert window.window_end - window.window_start == timedelta(days=1)
            assert next_start.flush()
        finally:
            next_start.shutdown(carry_open_window=False)
    outcome = json.loads(app.stdout.strip().splitlines()[-1])
    assert outcome["pending"] == 0  # nothing released, nothing pending: the day is carried
    # `app.ui.clicks` is not in the policy: every add dropped on the device, counted.
    assert outcome["dropped"] == {"otel_undeclared_instrument": PROMPTS}

    conn = open_warehouse(db)
    try:
        report = build_report(conn, source="otel example", policy=policy)
    finally:
        conn.close()
    views = {view.signal: view for view in report.views}
    for name in SIGNALS:
        view = views[name]
        assert view.windows == 1, name
        assert view.cells.height > 0, name
    requests = views["inference.requests"].cells
    assert set(requests["route"].to_list()) == {"local", "edge", "cloud", "other"}
    assert set(requests["devices"].to_list()) == {1}
    # One device under the local model: every cell is released, its estimate noisy
    # (discrete Laplace at 2 x 511 / 2.6 per cell), but there, with its interval.
    assert requests["estimate"].null_count() == 0
    latency = views["gen_ai.client.operation.duration"].cells
    assert latency["sum_estimate"].null_count() == 0
    doc = json.loads(render_json(report))
    assert all(name in json.dumps(doc) for name in SIGNALS)
