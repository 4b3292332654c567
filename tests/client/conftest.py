"""Fixtures for the client tests: a small policy, a fake clock, an in-memory ingest."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from nacl.public import PrivateKey, SealedBox
from nacl.signing import VerifyKey

from client import MemoryTransport, Telemetry, TelemetryConfig, Transport
from policies import CounterSignal, HistogramSignal, load_policy
from schemas import (
    AppInfo,
    BatchResult,
    EnvelopeBatch,
    EnvelopeV1,
    ItemResult,
    SignedEnvelope,
    Tier,
)
from tests.client.ingest_app import IngestApp, Time

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)  # aligned to the hour

# The default policy's privacy, consent and retention sections, with a small catalogue
# (and no fingerprint signal: tests of fingerprints bring their own policy), under the
# local model, with the daily cap of 8 these tests were written for.
_DEFAULT = load_policy()
POLICY = _DEFAULT.model_copy(
    update={
        "window_seconds": 3600,
        "privacy": _DEFAULT.privacy.model_copy(update={"daily_epsilon": 8.0}),
        "fingerprints": None,
        # Their rules name signals of the full catalogue.
        "canary": None,
        "cost": None,
        "otel": None,
        "signals": {
            "inference.requests": CounterSignal(
                privacy_model="local",
                tier=Tier.PERFORMANCE,
                attributes={"route": ["local", "edge", "cloud"], "model": ["a@1", "b@2"]},
                max_per_window=10,
                epsilon=0.5,
            ),
            "app.starts": CounterSignal(
                privacy_model="local", tier=Tier.HEALTH, max_per_window=3, epsilon=1.0
            ),
            "latency": HistogramSignal(
                privacy_model="local",
                tier=Tier.PERFORMANCE,
                unit="s",
                attributes={"route": ["local", "cloud"]},
                buckets=[0.1, 1.0, 10.0],
                max_events_per_window=5,
                value_range=(0.0, 20.0),
                epsilon=1.0,
                sum_share=0.5,
            ),
        },
    }
)


class FakeClock:
    """A settable wall clock."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kw: float) -> datetime:
        self.now += timedelta(**kw)
        return self.now


class MemoryIngest:
    """Opens and verifies every item like the real ingest would, and records batches."""

    def __init__(self) -> None:
        self.private_key = PrivateKey.generate()
        self.batches: list[EnvelopeBatch] = []
        self.envelopes: list[EnvelopeV1] = []

    @property
    def public_key(self) -> bytes:
        return bytes(self.private_key.public_key)

    def open(self, item: str) -> tuple[EnvelopeV1, bytes]:
        """Unseal, verify the signature, parse: (envelope, signer's public key)."""
        signed_json = SealedBox(self.private_key).decrypt(base64.b64decode(item, validate=True))
        signed = SignedEnvelope.model_validate_json(signed_json)
        VerifyKey(signed.public_key).verify(signed.payload, signed.signature)
        return EnvelopeV1.model_validate_json(signed.payload), signed.public_key

    def handle(self, batch: EnvelopeBatch) -> BatchResult:
        self.batches.append(batch)
        results = []
        for i, item in enumerate(batch.envelopes):
            envelope, _ = self.open(item)
            self.envelopes.append(envelope)
            results.append(ItemResult(index=i, status="accepted", envelope_id=envelope.envelope_id))
        return BatchResult(accepted=len(results), rejected=0, results=results)


@pytest.fixture
def ingest() -> MemoryIngest:
    return MemoryIngest()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


MakeTelemetry = Callable[..., Telemetry]


def new_telemetry(
    ingest: MemoryIngest,
    clock: FakeClock,
    state_dir: Path,
    transport: Transport | None = None,
    **kw: object,
) -> Telemetry:
    """A `Telemetry` of `POLICY` on `state_dir`, sending to `ingest` (manual mode unless
    `mode` is given; other `TelemetryConfig` fields by keyword). No consent is granted."""
    config = TelemetryConfig(
        app=AppInfo(name="demo-app", version="1.0"),
        region="eu-west",
        policy=POLICY,
        ingest_public_key=ingest.public_key,
        transport=transport or MemoryTransport(ingest.handle),
        state_dir=state_dir,
        clock=clock,
        mode=kw.pop("mode", "manual"),
        retry_backoff=0.0,
        **kw,  # type: ignore[arg-type]
    )
    return Telemetry(config)


@pytest.fixture
def make_telemetry(
    tmp_path: Path, ingest: MemoryIngest, clock: FakeClock
) -> Iterator[MakeTelemetry]:
    made: list[Telemetry] = []

    def make(
        transport: Transport | None = None,
        state_dir: Path | None = None,
        consent: tuple[Tier, ...] = (Tier.HEALTH, Tier.PERFORMANCE),
        **kw: object,
    ) -> Telemetry:
        telemetry = new_telemetry(ingest, clock, state_dir or tmp_path / "state", transport, **kw)
        made.append(telemetry)
        # Background mode loads the device's state on its worker: recordings made
        # before that are dropped (`state_loading`), so tests wait for it.
        assert telemetry.ready(timeout=30)
        for tier in consent:
            telemetry.grant_consent(tier)
        return telemetry

    yield make
    for telemetry in made:
        telemetry.shutdown(carry_open_window=False, timeout=1.0)


@pytest.fixture
def time_() -> Time:
    """Real time for a test against `server` (a module may override it: a clock ahead)."""
    return Time()


@pytest.fixture
def server(tmp_path: Path, time_: Time) -> Iterator[IngestApp]:
    """The real ingest app in-process, on `time_`'s ingest clock."""
    app = IngestApp(tmp_path, time_.ingest)
    yield app
    app.close()
