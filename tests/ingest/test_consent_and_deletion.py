"""The ingest refuses data its consent does not cover, and records deletion requests."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from nacl.public import PrivateKey
from nacl.signing import SigningKey

from auditlog import AuditLog
from ingest import IngestSettings, InMemoryEnvelopeBus, create_app
from schemas import IngestedDeletionRequest, IngestedEnvelope, device_id_for
from tests.ingest.conftest import REGION
from tests.ingest.kit import Device, asgi_client


async def _post(client: httpx.AsyncClient, items: list[str]) -> httpx.Response:
    return await client.post("/v1/envelopes", json={"envelopes": items})


async def test_an_envelope_with_a_tier_its_consent_does_not_cover_is_refused(
    client: httpx.AsyncClient, bus: InMemoryEnvelopeBus, device: Device, ingest_key: PrivateKey
) -> None:
    covered = device.envelope(consented_tiers=["performance"])
    uncovered = device.envelope(consented_tiers=["health"])  # carries a performance counter
    no_consent = device.envelope(consented_tiers=[], consent_hash=None)
    items = [device.item(ingest_key.public_key, e) for e in (covered, uncovered, no_consent)]
    resp = await _post(client, items)
    assert resp.status_code == 422
    results = resp.json()["results"]
    assert [r["status"] for r in results] == ["accepted", "rejected", "rejected"]
    assert results[1]["reason"] == results[2]["reason"] == "consent_missing"
    assert "['performance']" in results[1]["detail"]
    assert len(bus.published) == 1


async def test_consented_tiers_need_the_consent_hash(
    client: httpx.AsyncClient, device: Device, ingest_key: PrivateKey
) -> None:
    env = device.envelope(consent_hash=None)
    resp = await _post(client, [device.item(ingest_key.public_key, env)])
    assert resp.json()["results"][0]["reason"] == "schema_invalid"


def _deletion(key: SigningKey, **overrides: Any) -> dict[str, Any]:
    request: dict[str, Any] = {
        "schema_version": 1,
        "request_id": str(uuid.uuid4()),
        "device_id": device_id_for(bytes(key.verify_key)),
        "region": REGION,
        "tier": "content",
        "requested_at": datetime(2026, 3, 2, 10, tzinfo=UTC).isoformat(),
        "consent_hash": "ab" * 32,
        "consent_version": 3,
    }
    request.update(overrides)
    payload = json.dumps(request).encode()
    return {
        "v": 1,
        "alg": "ed25519",
        "public_key": base64.b64encode(bytes(key.verify_key)).decode(),
        "payload": base64.b64encode(payload).decode(),
        "signature": base64.b64encode(key.sign(payload).signature).decode(),
    }


async def test_a_signed_deletion_request_is_recorded_on_the_bus(
    client: httpx.AsyncClient, bus: InMemoryEnvelopeBus
) -> None:
    key = SigningKey.generate()
    body = _deletion(key)
    resp = await client.post("/v1/deletion-requests", json=body)
    assert resp.status_code == 202
    (item,) = bus.published
    assert isinstance(item, IngestedDeletionRequest)
    assert str(item.deletion.request_id) == resp.json()["request_id"]
    assert resp.json()["status"] == "recorded"
    assert item.deletion.device_id == device_id_for(bytes(key.verify_key))
    # Envelopes and deletions share the bus; an envelope is still an envelope.
    assert not isinstance(item, IngestedEnvelope)


async def test_deletion_requests_are_verified(
    client: httpx.AsyncClient, bus: InMemoryEnvelopeBus
) -> None:
    key, other = SigningKey.generate(), SigningKey.generate()
    forged = _deletion(key)
    forged["signature"] = _deletion(other)["signature"]
    cases = {
        "bad_signature": forged,
        "device_key_mismatch": _deletion(key, device_id=device_id_for(bytes(other.verify_key))),
        "wrong_region": _deletion(key, region="us-east"),
        "schema_invalid": _deletion(key, tier="everything"),
    }
    for reason, body in cases.items():
        resp = await client.post("/v1/deletion-requests", json=body)
        assert resp.status_code == 422, reason
        assert resp.json()["error"] == reason
    resp = await client.post("/v1/deletion-requests", content=b"not json")
    assert resp.json()["error"] == "malformed_signed_envelope"
    assert resp.json()["detail"].startswith("<signed request>: Invalid JSON")
    assert bus.published == []


async def test_a_deletion_payload_is_read_strictly_as_the_schema_types_it(
    client: httpx.AsyncClient, bus: InMemoryEnvelopeBus
) -> None:
    """The published schema gives `consent_version` as an integer and `requested_at` as a
    date-time string; as for envelopes, other JSON types are refused, not coerced."""
    key = SigningKey.generate()
    cases = {
        "consent_version": _deletion(key, consent_version="7"),
        "requested_at": _deletion(key, requested_at=1_700_000_000),
    }
    for field, body in cases.items():
        resp = await client.post("/v1/deletion-requests", json=body)
        assert resp.status_code == 422, field
        assert resp.json()["error"] == "schema_invalid", field
        assert field in resp.json()["detail"], resp.json()
    assert bus.published == []


async def test_a_deletion_request_is_answered_503_when_the_bus_is_down(
    client: httpx.AsyncClient, bus: InMemoryEnvelopeBus
) -> None:
    bus.fail_with = "kafka down"
    resp = await client.post("/v1/deletion-requests", json=_deletion(SigningKey.generate()))
    assert resp.status_code == 503


_RECEIVED = datetime(2025, 1, 5, 12, tzinfo=UTC)
"""The ingest clock of the tests below."""


async def test_a_requested_at_ahead_of_the_ingest_clock_or_at_the_calendar_edge_is_clock_skew(
    settings: IngestSettings, bus: InMemoryEnvelopeBus
) -> None:
    """A requested_at the warehouse would hand back as text (year 10000 or year 0 in
    UTC) once jammed every device's writes; one beyond the skew tolerance is a clock
    running ahead. Each is refused and audited; the unpublished bus stays empty."""
    key = SigningKey.generate()
    device_id = device_id_for(bytes(key.verify_key))
    ahead = _RECEIVED + timedelta(seconds=settings.max_clock_skew_seconds + 1)
    refused = {
        "9999-12-31T23:59:59-12:00": "edge of the calendar",
        "0001-01-01T00:00:00+14:00": "edge of the calendar",
        "9999-12-31T23:59:59+00:00": "ahead of the ingest clock",
        ahead.isoformat(): "ahead of the ingest clock",
    }
    async with asgi_client(create_app(settings, bus=bus, clock=lambda: _RECEIVED)) as client:
        for requested_at, why in refused.items():
            resp = await client.post(
                "/v1/deletion-requests", json=_deletion(key, requested_at=requested_at)
            )
            assert resp.status_code == 422, requested_at
            assert resp.json()["error"] == "clock_skew", requested_at
            assert why in resp.json()["detail"], resp.json()
    assert bus.published == []
    audit = AuditLog(settings.state_dir / "audit.sqlite3", read_only=True)
    entries = audit.entries(action="deletion")
    audit.close()
    assert [(e.decision, e.reason, e.device_id) for e in entries] == [
        ("rejected", "clock_skew", device_id)
    ] * len(refused)


async def test_a_requested_at_within_the_skew_or_in_the_past_is_recorded(
    settings: IngestSettings, bus: InMemoryEnvelopeBus
) -> None:
    """A device offline for weeks sends its revocation late: an old requested_at (here
    90 days, past the shortest retention, and year 1) is still the user's request."""
    key = SigningKey.generate()
    skew = timedelta(seconds=settings.max_clock_skew_seconds)
    times = [
        _RECEIVED + skew,
        _RECEIVED,
        _RECEIVED - timedelta(days=90),
        datetime(1, 1, 1, tzinfo=UTC),
    ]
    async with asgi_client(create_app(settings, bus=bus, clock=lambda: _RECEIVED)) as client:
        for at in times:
            body = _deletion(key, requested_at=at.isoformat())
            resp = await client.post("/v1/deletion-requests", json=body)
            assert resp.status_code == 202, resp.text
    recorded = [i for i in bus.published if isinstance(i, IngestedDeletionRequest)]
    assert [i.deletion.requested_at for i in recorded] == times
    assert {i.received_at for i in recorded} == {_RECEIVED}  # the ingest's clock
