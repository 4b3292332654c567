"""Test kit: build sealed, signed envelope items with PyNaCl directly, and run an ASGI
app's lifespan around an httpx client. The wire format is the contract; the one thing
taken from client/ is a release's noise, which the ingest checks against the policy.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import AsyncIterator, MutableMapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from nacl.public import PublicKey, SealedBox
from nacl.signing import SigningKey

from client._domain import CellDomain
from client._release import release_counter
from policies import DEFAULT_POLICY_PATH, PILOT_POLICY_PATH, CounterSignal, load_policy
from schemas import EnvelopeV1, IngestedEnvelope, device_id_for

__all__ = [
    "FIRST_WINDOW",
    "SERVED_POLICIES",
    "WINDOW",
    "Device",
    "asgi_client",
    "counter_aggregate",
    "ingested",
    "policy_hash",
    "seal",
]


SERVED_POLICIES = (DEFAULT_POLICY_PATH, PILOT_POLICY_PATH)
"""The policy files a test ingest serves: the kit's envelopes are made under the pilot
policy (local model: its counter is a local release the ingest accepts)."""


_PILOT = load_policy(PILOT_POLICY_PATH)
WINDOW = timedelta(seconds=_PILOT.window_seconds)
"""The pilot policy's window: the kit's envelopes each cover one whole window."""
KIT_WINDOWS = 6
"""Windows a kit device can send before its next one would be ahead of the clock."""


def _first_window() -> datetime:
    # Recent, as a device's are: the ingest refuses a window older than its tiers'
    # retention (content: 7 days), and one ending ahead of its clock. Each device's
    # windows are consecutive days: the first six end by today's midnight (UTC).
    now = datetime.now(UTC)
    return datetime(now.year, now.month, now.day, tzinfo=UTC) - KIT_WINDOWS * WINDOW


FIRST_WINDOW = _first_window()
"""The first window of every kit device (the kit's clock-free envelopes start here)."""
_MECHANISM = _PILOT.privacy.mechanisms.counter
_CELLS = CellDomain(_PILOT.signals["inference.requests"].attributes).size


def policy_hash() -> str:
    """The pilot policy's hash: an ingest serving `SERVED_POLICIES` accepts it."""
    return _PILOT.content_hash


def counter_aggregate(value: float = 3.0) -> dict[str, Any]:
    """One released counter cell as the client would send it under the pilot policy
    (local model): its noise is what the client's release path makes."""
    spec = _PILOT.signals["inference.requests"]
    assert isinstance(spec, CounterSignal)
    release = release_counter(
        "inference.requests", spec, CellDomain(spec.attributes), [0] * _CELLS, _MECHANISM
    )
    aggregate = release.aggregates[0].model_dump(mode="json")
    aggregate["value"] = value
    return aggregate


def seal(ingest_key: PublicKey, plaintext: bytes) -> str:
    """base64(SealedBox(ingest_key).encrypt(plaintext))."""
    return base64.b64encode(SealedBox(ingest_key).encrypt(plaintext)).decode("ascii")


class Device:
    """A software-keyed device that builds envelopes and seals them to an ingest key."""

    def __init__(self, region: str = "eu-test") -> None:
        self.key = SigningKey.generate()
        self.public_key = bytes(self.key.verify_key)
        self.device_id = device_id_for(self.public_key)
        self.region = region
        self._sequence = 0

    def envelope(self, **overrides: Any) -> dict[str, Any]:
        """An EnvelopeV1 as a JSON-ready dict; `overrides` replace fields (even invalidly).

        Each one is the device's next: its sequence one higher, its window the next
        whole policy window (one day; the first is `FIRST_WINDOW`), as the ingest's ledger
        requires.
        """
        self._sequence += 1
        start = FIRST_WINDOW + WINDOW * (self._sequence - 1)
        env: dict[str, Any] = {
            "schema_version": 1,
            "envelope_id": str(uuid.uuid4()),
            "device_id": self.device_id,
            "sequence": self._sequence,
            "sent_at": (start + WINDOW + timedelta(seconds=5)).isoformat(),
            "window_start": start.isoformat(),
            "window_end": (start + WINDOW).isoformat(),
            "region": self.region,
            "policy_hash": policy_hash(),
            "app": {"name": "demo-app", "version": "1.0.0"},
            "aggregates": [counter_aggregate()],
            # The device's consent covers the tier it sends (performance).
            "consent_hash": "c0" * 32,
            "consented_tiers": ["health", "performance"],
        }
        env.update(overrides)
        return env

    def signed(self, payload: bytes, *, signature: bytes | None = None) -> bytes:
        """SignedEnvelope JSON over exactly `payload`."""
        sig = signature if signature is not None else self.key.sign(payload).signature
        return json.dumps(
            {
                "v": 1,
                "alg": "ed25519",
                "public_key": base64.b64encode(self.public_key).decode(),
                "payload": base64.b64encode(payload).decode(),
                "signature": base64.b64encode(sig).decode(),
            }
        ).encode()

    def item(self, ingest_key: PublicKey, envelope: dict[str, Any] | None = None) -> str:
        """A sealed batch item carrying `envelope` (default: a fresh valid one)."""
        payload = json.dumps(envelope if envelope is not None else self.envelope()).encode()
        return seal(ingest_key, self.signed(payload))


def ingested(device: Device) -> IngestedEnvelope:
    """A fresh envelope of `device` as the ingest hands it on (received 10 s after its
    window ended, software assurance): for tests of the bus and the sink, past
    verification."""
    envelope = EnvelopeV1.model_validate_json(json.dumps(device.envelope()))
    return IngestedEnvelope(
        envelope=envelope,
        received_at=envelope.window_end + timedelta(seconds=10),
        key_fingerprint="ab" * 32,
        assurance="software",
    )


@asynccontextmanager
async def asgi_client(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    """Run `app`'s ASGI lifespan and yield a client talking to it in-process.

    httpx's ASGITransport does not run the lifespan nor pass its state into requests;
    this does both, as uvicorn would.
    """
    state: dict[str, Any] = {}
    inbox: asyncio.Queue[MutableMapping[str, Any]] = asyncio.Queue()
    outbox: asyncio.Queue[MutableMapping[str, Any]] = asyncio.Queue()
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": state}
    lifespan = asyncio.create_task(app(scope, inbox.get, outbox.put))
    await inbox.put({"type": "lifespan.startup"})
    started = await outbox.get()
    if started["type"] != "lifespan.startup.complete":
        await lifespan
        raise RuntimeError(f"lifespan startup failed: {started}")

    async def with_state(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        scope["state"] = dict(state)
        await app(scope, receive, send)

    try:
        transport = httpx.ASGITransport(app=with_state)
        async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
            yield client
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        await outbox.get()
        await lifespan
