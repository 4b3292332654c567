"""Run a simulated fleet through the real pipeline: client -> HTTP ingest -> sink -> DuckDB.

Shared by `quietwire demo` and the end-to-end integration tests. Every stage is the
production code: each simulated device is a real `client.Telemetry` (manual mode, its
own key and state directory) that posts sealed envelopes over loopback HTTP to a real
uvicorn-served ingest; the ingest either hands them to the DuckDB sink in-process (the
embedded default) or produces them to Kafka, from where the sink's consumer group
writes them. The simulator also keeps the clamped truth behind every release, so the
caller can check that reported intervals cover it.

Signals under the aggregate model leave the devices as Prio3 reports: the run starts a
helper (a second operator's service, its own key and state, real HTTP on loopback),
puts its key into the policy the devices and the ingest use, and once the fleet has
sent (and, with Kafka, the sink has drained the topic) runs the leader's aggregation
job and collector against the warehouse: proofs verified with the helper, each side's
noise added, fleet aggregates of at least `min_batch_size` devices revealed.

Every device consents to the health and performance tiers; every figure is recorded
with the request's route and model version; failed requests are also reported as
exceptions, counted by error fingerprint (and route and model version). No simulated
device opts in to the content tier: their keys are software keys, and the default
attestation policy requires a TPM key for content (the ingest would refuse those
envelopes).
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import shutil
import socket
import sqlite3
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import uvicorn

from auditlog import AuditLog
from client import HttpTransport, Telemetry, TelemetryConfig
from client._release import TrueCounter, TrueHistogram, TrueTotal
from client._telemetry import CollectedWindow
from fleetsim._simulation import FleetSpec, InferenceEvent, device_profiles, simulate_window
from ingest import DuckDBSink, IngestSettings, KafkaSinkConsumer, create_app
from ingest._keys import write_private_key
from ingest._topics import ensure_topics
from ingest.aggregation import HelperClient, HelperSettings, RunStats, aggregate_all, serve_helper
from policies import HelperEndpoint, Policy, dump_policy, load_policy
from schemas import AppInfo, Tier

__all__ = ["FleetRun", "TruthKey", "run_fleet"]

# (signal, window_start, attributes JSON, kind, bucket_index): kind is counter | bucket | sum.
TruthKey = tuple[str, datetime, str, str, int | None]

REGION = "eu"
APP = AppInfo(name="notes-ai", version="3.2.0")
_REQUESTS = "inference.requests"
_ERRORS = "inference.errors"
_LATENCY = "gen_ai.client.operation.duration"
_TOKENS = "gen_ai.client.token.usage"
_SENDERS = 4  # devices closing windows at once
# The fleet's error-fingerprint key: shipped with the app, the same on every device.
FINGERPRINT_KEY = b"notes-ai fleet fingerprint key v1"


class InferenceFailed(RuntimeError):
    """What the simulated app raises when a request fails."""


def _fail(route: str) -> None:
    raise InferenceFailed(f"request on route {route} failed")  # the message never leaves


@dataclass
class FleetRun:
    """What a fleet run produced: where the data is, and the truth behind it."""

    db: Path
    devices: int
    windows: int
    envelopes_sent: int = 0
    envelopes_stored: int = 0
    truth: dict[TruthKey, float] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    aggregation: RunStats | None = None
    """What the leader's aggregation job and collector did (aggregate-model signals)."""
    audit_log: Path | None = None
    """A copy of the ingest's audit log, kept next to the warehouse (`<db>.audit.sqlite3`)."""
    policy: Policy | None = None
    """The policy the fleet ran under."""


class _SimClock:
    """The simulated wall clock all devices share."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def _serve(settings: IngestSettings, clock: Callable[[], datetime]) -> Iterator[str]:
    """The ingest app under uvicorn on a loopback port, in a thread; yields its base URL.

    The ingest runs on the simulated clock too: its device ledger counts epsilon per
    ingest day, and would refuse days of simulated windows sent in one real day.
    """
    app = create_app(settings, clock=clock)
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, name="quietwire-ingest", daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=1.0) as probe:
            for _ in range(600):
                if server.started:
                    break
                if not thread.is_alive():
                    raise RuntimeError("the ingest server failed to start")
                with suppress(httpx.TransportError):
                    probe.get("/healthz")
                threading.Event().wait(0.05)
            else:
                raise RuntimeError("the ingest server did not start within 30 s")
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def _record(tel: Telemetry, events: list[InferenceEvent]) -> None:
    requests = tel.counter(_REQUESTS)
    errors = tel.counter(_ERRORS)
    latency = tel.histogram(_LATENCY)
    tokens = tel.histogram(_TOKENS)
    for e in events:
        requests.add(1, route=e.route, model=e.model)
        latency.record(e.latency_s, route=e.route, model=e.model)
        tokens.record(e.tokens, route=e.route, model=e.model)
        if e.failed:
            errors.add(1, route=e.route, model=e.model)
            try:
                _fail(e.route)
            except InferenceFailed as exc:
                tel.record_exception(exc, route=e.route, model=e.model)


def _add_truth(truth: dict[TruthKey, float], start: datetime, item: object) -> None:
    if isinstance(item, TrueTotal):
        kind = "total" if item.measure == "count" else "total_sum"
        tkey: TruthKey = (item.signal, start, "{}", kind, None)
        truth[tkey] = truth.get(tkey, 0.0) + item.value
    elif isinstance(item, TrueCounter):
        attrs = json.dumps(item.attributes, sort_keys=True, separators=(",", ":"))
        key: TruthKey = (item.signal, start, attrs, "counter", None)
        truth[key] = truth.get(key, 0.0) + item.value
    elif isinstance(item, TrueHistogram):
        attrs = json.dumps(item.attributes, sort_keys=True, separators=(",", ":"))
        k: TruthKey
        for i, count in enumerate(item.counts):
            k = (item.signal, start, attrs, "bucket", i)
            truth[k] = truth.get(k, 0.0) + count
        k = (item.signal, start, attrs, "sum", None)
        truth[k] = truth.get(k, 0.0) + item.sum
        # The per-cell event count an aggregate-model histogram shares as its own task.
        k = (item.signal, start, attrs, "count", None)
        truth[k] = truth.get(k, 0.0) + sum(item.counts)


async def _drain_kafka(db: Path, bootstrap: str, topic: str, expected: int) -> int:
    sink = DuckDBSink(db)
    try:
        async with KafkaSinkConsumer(sink, bootstrap_servers=bootstrap, topics=[topic]) as cons:
            await asyncio.wait_for(
                cons.run_until(lambda _s: sink.envelope_count() >= expected), timeout=300
            )
        return sink.envelope_count()
    finally:
        sink.close()


@dataclass(frozen=True)
class _HelperRun:
    """The run's helper: its settings, and the policy that names its key."""

    settings: HelperSettings
    policy: Policy
    port: int
    verify_key: bytes
    token: str

    @classmethod
    def make(cls, state_dir: Path, policy: Policy) -> _HelperRun:
        state_dir.mkdir(parents=True, exist_ok=True)
        key = write_private_key(state_dir / "helper.key")
        port = _free_port()
        verify_key, token = secrets.token_bytes(32), secrets.token_urlsafe(24)
        endpoint = HelperEndpoint(
            url=f"http://127.0.0.1:{port}",
            public_key=base64.b64encode(bytes(key.public_key)).decode("ascii"),
        )
        aggregation = policy.aggregation.model_copy(update={"helper": endpoint})
        return cls(
            HelperSettings(
                private_key_path=state_dir / "helper.key",
                state_dir=state_dir,
                verify_key=verify_key.hex(),
                leader_token=token,
            ),
            policy.model_copy(update={"aggregation": aggregation}),
            port,
            verify_key,
            token,
        )

    def aggregate(self, sink: DuckDBSink, ingest_state: Path, now: datetime) -> RunStats | None:
        """Every batch through the leader and this helper over HTTP, then collected."""
        if not self.policy.aggregate_signals:
            return None
        with (
            serve_helper(self.settings, policies=[self.policy], port=self.port) as url,
            HelperClient(url, token=self.token) as client,
        ):
            audit = AuditLog(ingest_state / "audit.sqlite3")
            try:
                return aggregate_all(
                    sink, client, [self.policy], now, verify_key=self.verify_key, audit=audit
                )
            finally:
                audit.close()


def _keep_audit_log(source: Path, db: Path) -> Path | None:
    """Copy the ingest's audit log (SQLite; every writer closed) next to `db`."""
    if not source.exists():
        return None
    target = db.with_name(db.name + ".audit.sqlite3")
    target.unlink(missing_ok=True)
    with closing(sqlite3.connect(source)) as src, closing(sqlite3.connect(target)) as dst:
        src.backup(dst)
    return target


def run_fleet(
    spec: FleetSpec,
    db: Path,
    *,
    kafka: str | None = None,
    policy: Policy | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> FleetRun:
    """Simulate `spec` through the real pipeline into the warehouse file `db`.

    `db` is replaced if it exists. With `kafka` (a bootstrap address whose topic
    `quietwire.envelopes.<region>` exists) the ingest produces to Kafka and a sink
    consumer drains the topic into `db`. `progress(done, total)` is called per device
    window.
    """
    policy = policy or load_policy()
    db.parent.mkdir(parents=True, exist_ok=True)
    for stale in (db, db.with_name(db.name + ".wal")):
        stale.unlink(missing_ok=True)
    work = Path(tempfile.mkdtemp(prefix="quietwire-fleet-"))
    helper = _HelperRun.make(work / "helper", policy)
    policy = helper.policy
    window = timedelta(seconds=policy.window_seconds)
    # Whole windows ending at the last aligned boundary before now: realistic timestamps.
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    last_end = epoch + (datetime.now(UTC) - epoch) // window * window
    first_start = last_end - spec.windows * window
    clock = _SimClock(first_start)
    run = FleetRun(db=db, devices=spec.devices, windows=spec.windows)
    settings = IngestSettings(
        region=REGION,
        state_dir=work / "ingest",
        warehouse_path=db,
        kafka_bootstrap=kafka,
        known_policy_hashes=frozenset({policy.content_hash}),
        policy_paths=(dump_policy(policy, work / "policy.yaml"),),
    )
    if kafka is not None:
        asyncio.run(ensure_topics(kafka, [settings.topic]))
    # One connection pool for the whole simulated fleet: a real device has its own,
    # but thousands of TLS contexts would only measure this machine's setup cost.
    http = httpx.Client(timeout=30.0)
    try:
        with _serve(settings, clock) as base:
            key_b64 = httpx.get(f"{base}/v1/ingest-key", timeout=10).json()["public_key"]
            ingest_key = base64.b64decode(key_b64)
            profiles = device_profiles(spec)
            fleet = [
                Telemetry(
                    TelemetryConfig(
                        app=APP,
                        region=REGION,
                        policy=policy,
                        ingest_public_key=ingest_key,
                        transport=HttpTransport(base, client=http),
                        state_dir=work / "devices" / f"{p.index:05d}",
                        clock=clock,
                        mode="manual",
                        fingerprint_key=FINGERPRINT_KEY,
                    )
                )
                for p in profiles
            ]
            for tel in fleet:
                tel.grant_consent(Tier.HEALTH)
                tel.grant_consent(Tier.PERFORMANCE)
            total, done = spec.windows * spec.devices, 0

            def close_window(tel: Telemetry, end: datetime) -> list[CollectedWindow]:
                collected = tel.collect_with_truth(end)
                tel.flush()
                return collected

            # Devices close their windows and send concurrently, as a real fleet does:
            # the embedded ingest commits what arrives together in one transaction.
            with ThreadPoolExecutor(max_workers=_SENDERS) as senders:
                for w in range(spec.windows):
                    start = first_start + w * window
                    clock.now = start + window / 2
                    for profile, tel in zip(profiles, fleet, strict=True):
                        _record(tel, simulate_window(profile, w, spec.seed, policy.window_seconds))
                    clock.now = start + window
                    for result in senders.map(lambda t: close_window(t, clock.now), fleet):
                        for collected in result:
                            for item in collected.truth:
                                _add_truth(run.truth, start, item)
                            run.envelopes_sent += 1
                        done += 1
                        if progress is not None:
                            progress(done, total)
            for tel in fleet:
                tel.shutdown(carry_open_window=False)
                for reason, n in tel.dropped().items():
                    run.dropped[reason] = run.dropped.get(reason, 0) + n
        if kafka is not None:
            run.envelopes_stored = asyncio.run(
                _drain_kafka(db, kafka, settings.topic, run.envelopes_sent)
            )
        sink = DuckDBSink(db)
        try:
            run.envelopes_stored = sink.envelope_count()
            # The ingest has stopped: the leader's job is the warehouse's one writer now.
            run.aggregation = helper.aggregate(sink, settings.state_dir, clock.now)
        finally:
            sink.close()
        run.audit_log = _keep_audit_log(settings.state_dir / "audit.sqlite3", db)
        run.policy = policy
    finally:
        http.close()
        shutil.rmtree(work, ignore_errors=True)
    return run
