"""The HTTP service: what a device sees for each kind of batch."""

from __future__ import annotations

import base64
import json
import sqlite3
from typing import Any

import httpx
import pytest
from nacl.public import PrivateKey, PublicKey

from auditlog import AuditLog
from ingest import IngestSettings, InMemoryEnvelopeBus, create_app
from schemas import BatchResult, RejectReason
from tests.ingest.kit import SERVED_POLICIES, Device, asgi_client, seal


async def _post(client: httpx.AsyncClient, items: list[str]) -> httpx.Response:
    return await client.post("/v1/envelopes", json={"envelopes": items})


async def test_accepted_batch_is_202_and_published(
    client: httpx.AsyncClient, bus: InMemoryEnvelopeBus, device: Device, ingest_key: PrivateKey
) -> None:
    envs = [device.envelope(), device.envelope()]
    resp = await _post(client, [device.item(ingest_key.public_key, e) for e in envs])
    assert resp.status_code == 202
    result = BatchResult.model_validate_json(resp.content)
    assert (result.accepted, result.rejected) == (2, 0)
    assert [str(r.envelope_id) for r in result.results] == [e["envelope_id"] for e in envs]
    assert [str(p.envelope.envelope_id) for p in bus.published] == [e["envelope_id"] for e in envs]
    assert all(p.assurance == "software" for p in bus.published)


async def test_ingest_key_endpoint_gives_the_key_to_seal_to(
    client: httpx.AsyncClient, bus: InMemoryEnvelopeBus, device: Device
) -> None:
    resp = await client.get("/v1/ingest-key")
    assert resp.status_code == 200
    body = resp.json()
    assert body["region"] == "eu-test"
    key = PublicKey(base64.b64decode(body["public_key"]))
    assert (await _post(client, [device.item(key)])).status_code == 202
    assert len(bus.published) == 1


def _tampered(device: Device, key: PublicKey) -> str:
    """Signed, then changed in transit: the signature covers the original bytes."""
    payload = json.dumps(device.envelope()).encode()
    signature = device.key.sign(payload).signature
    return seal(key, device.signed(payload.replace(b"3.0", b"9.0"), signature=signature))


_CASES: dict[RejectReason, Any] = {
    RejectReason.BAD_SIGNATURE: _tampered,
    RejectReason.UNSEAL_FAILED: lambda d, k: d.item(PrivateKey.generate().public_key),
    RejectReason.NOT_BASE64: lambda d, k: "%%% not base64 %%%",
    RejectReason.DEVICE_KEY_MISMATCH: lambda d, k: d.item(
        k, d.envelope(device_id=Device().device_id)
    ),
    RejectReason.UNKNOWN_POLICY: lambda d, k: d.item(k, d.envelope(policy_hash="f" * 64)),
    RejectReason.WRONG_REGION: lambda d, k: d.item(k, d.envelope(region="us-test")),
    RejectReason.SCHEMA_INVALID: lambda d, k: d.item(
        k, d.envelope(window_end="2024-12-31T00:00:00+00:00")
    ),
    RejectReason.ITEM_TOO_LARGE: lambda d, k: "A" * (32 * 1024),
}


@pytest.mark.parametrize("reason", list(_CASES), ids=[r.value for r in _CASES])
async def test_each_reject_reason_is_a_422_with_the_reason(
    client: httpx.AsyncClient,
    bus: InMemoryEnvelopeBus,
    device: Device,
    ingest_key: PrivateKey,
    reason: RejectReason,
) -> None:
    resp = await _post(client, [_CASES[reason](device, ingest_key.public_key)])
    assert resp.status_code == 422
    result = BatchResult.model_validate_json(resp.content)
    assert (result.accepted, result.rejected) == (0, 1)
    assert result.results[0].status == "rejected"
    assert result.results[0].reason is reason
    assert result.results[0].detail
    assert bus.published == []


async def test_mixed_batch_is_422_and_the_accepted_items_are_published(
    client: httpx.AsyncClient, bus: InMemoryEnvelopeBus, device: Device, ingest_key: PrivateKey
) -> None:
    good = device.envelope()
    items = [
        "not base64 at all",
        device.item(ingest_key.public_key, good),
        device.item(ingest_key.public_key, device.envelope(region="elsewhere")),
    ]
    resp = await _post(client, items)
    assert resp.status_code == 422
    result = BatchResult.model_validate_json(resp.content)
    assert (result.accepted, result.rejected) == (1, 2)
    assert [r.status for r in result.results] == ["rejected", "accepted", "rejected"]
    assert [r.index for r in result.results] == [0, 1, 2]
    assert [str(p.envelope.envelope_id) for p in bus.published] == [good["envelope_id"]]


async def test_resent_envelope_is_accepted_as_duplicate_and_not_republished(
    client: httpx.AsyncClient, bus: InMemoryEnvelopeBus, device: Device, ingest_key: PrivateKey
) -> None:
    item = device.item(ingest_key.public_key)
    assert (await _post(client, [item])).status_code == 202
    resp = await _post(client, [item, item])
    assert resp.status_code == 202
    result = BatchResult.model_validate_json(resp.content)
    assert result.accepted == 2
    assert {r.reason for r in result.results} == {RejectReason.DUPLICATE}
    assert len(bus.published) == 1


async def test_same_envelope_twice_in_one_batch_is_published_once(
    client: httpx.AsyncClient, bus: InMemoryEnvelopeBus, device: Device, ingest_key: PrivateKey
) -> None:
    item = device.item(ingest_key.public_key)
    resp = await _post(client, [item, item])
    assert resp.status_code == 202
    result = BatchResult.model_validate_json(resp.content)
    assert [r.reason for r in result.results] == [None, RejectReason.DUPLICATE]
    assert len(bus.published) == 1


async def test_another_devices_envelope_id_does_not_pre_empt_the_owner(
    client: httpx.AsyncClient, bus: InMemoryEnvelopeBus, device: Device, ingest_key: PrivateKey
) -> None:
    victim = device.envelope()
    attacker = Device(device.region)
    squat = attacker.envelope(envelope_id=victim["envelope_id"])
    assert (await _post(client, [attacker.item(ingest_key.public_key, squat)])).status_code == 202
    resp = await _post(client, [device.item(ingest_key.public_key, victim)])
    result = BatchResult.model_validate_json(resp.content)
    assert [r.reason for r in result.results] == [None]  # published, not a "duplicate"
    assert [p.envelope.device_id for p in bus.published] == [
        attacker.device_id,
        device.device_id,
    ]


async def test_bus_failure_is_503_and_the_retry_is_published(
    client: httpx.AsyncClient, bus: InMemoryEnvelopeBus, device: Device, ingest_key: PrivateKey
) -> None:
    item = device.item(ingest_key.public_key)
    bus.fail_with = "broker down"
    resp = await _post(client, [item])
    assert resp.status_code == 503
    assert resp.json() == {"error": "bus_unavailable", "detail": "broker down"}
    assert resp.headers["retry-after"]
    bus.fail_with = None
    resp = await _post(client, [item])
    assert resp.status_code == 202
    # Not answered as a duplicate: the failed attempt was never durable.
    assert BatchResult.model_validate_json(resp.content).results[0].reason is None
    assert len(bus.published) == 1


async def test_a_bus_failure_audits_the_admissions_it_left_unpublished(
    client: httpx.AsyncClient,
    bus: InMemoryEnvelopeBus,
    settings: Any,
    device: Device,
    ingest_key: PrivateKey,
) -> None:
    # The ledger charged the envelope before the bus failed: that decision is audited;
    # the one the ledger refused is audited as refused, and only as that.
    older, env = device.envelope(), device.envelope()
    items = [device.item(ingest_key.public_key, e) for e in (env, older)]
    bus.fail_with = "broker down"
    assert (await _post(client, items)).status_code == 503
    log = AuditLog(settings.state_dir / "audit.sqlite3")
    entries = [e for e in log.entries() if e.action == "envelope"]
    log.close()
    assert sorted((e.reason or "", (e.detail or "")[:55]) for e in entries) == [
        ("bus_unavailable", f"envelope {env['envelope_id']}: admitted"),
        ("sequence_not_increasing", f"envelope {older['envelope_id']}: sequence"),
    ]
    assert {e.device_id for e in entries} == {device.device_id}


async def test_an_audit_log_that_cannot_commit_is_a_503_not_a_500(
    app: Any, client: httpx.AsyncClient, device: Device, ingest_key: PrivateKey, monkeypatch: Any
) -> None:
    def full(self: AuditLog, records: Any) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(AuditLog, "append_many", full)
    item = device.item(ingest_key.public_key)
    resp = await _post(client, [item])
    assert resp.status_code == 503
    assert resp.json()["error"] == "audit_unavailable"
    assert "database or disk is full" in resp.json()["detail"]
    assert resp.headers["retry-after"]
    monkeypatch.undo()
    # The envelope was durable: the retry is answered accepted (a duplicate).
    resp = await _post(client, [item])
    assert resp.status_code == 202


async def test_too_many_items_is_413(
    client: httpx.AsyncClient, bus: InMemoryEnvelopeBus, device: Device, ingest_key: PrivateKey
) -> None:
    items = [device.item(ingest_key.public_key) for _ in range(9)]  # max_batch is 8
    resp = await _post(client, items)
    assert resp.status_code == 413
    assert resp.json()["error"] == RejectReason.BATCH_TOO_LARGE.value
    assert bus.published == []


async def test_body_over_the_byte_limit_is_413_before_parsing(client: httpx.AsyncClient) -> None:
    body = b"{" * (300 * 1024)  # not even JSON: the limit applies first
    resp = await client.post("/v1/envelopes", content=body)
    assert resp.status_code == 413
    assert resp.json()["error"] == "batch_too_large"


async def test_body_over_the_limit_without_content_length_is_413(
    client: httpx.AsyncClient,
) -> None:
    async def chunks() -> Any:
        for _ in range(300):
            yield b"x" * 1024

    resp = await client.post("/v1/envelopes", content=chunks())
    assert resp.status_code == 413


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"this is not json", 400),
        (b"", 400),
        (b'{"envelopes": "x"}', 422),
        (b'{"envelopes": []}', 422),
        (b'{"items": ["x"]}', 422),
        (b"[1, 2]", 422),
    ],
)
async def test_malformed_bodies_are_4xx_machine_readable(
    client: httpx.AsyncClient, body: bytes, status: int
) -> None:
    resp = await client.post(
        "/v1/envelopes", content=body, headers={"content-type": "application/json"}
    )
    assert resp.status_code == status
    assert resp.json()["error"] == "malformed_body"
    assert resp.json()["detail"]


async def test_unknown_route_and_wrong_method_are_json_errors(client: httpx.AsyncClient) -> None:
    missing = await client.get("/v2/nothing")
    assert (missing.status_code, missing.json()["error"]) == (404, "not_found")
    wrong = await client.get("/v1/envelopes")
    assert (wrong.status_code, wrong.json()["error"]) == (405, "method_not_allowed")


async def test_large_batch_is_verified_off_the_event_loop_with_the_same_results(
    tmp_path: Any, ingest_key: PrivateKey, device: Device
) -> None:
    settings = IngestSettings(
        policy_paths=SERVED_POLICIES,
        region="eu-test",
        private_key_path=tmp_path / "ingest.key",
        state_dir=tmp_path,
    )
    bus = InMemoryEnvelopeBus()
    # One envelope per device: a device's daily epsilon covers six of the kit's releases.
    big = [Device("eu-test").item(ingest_key.public_key) for _ in range(120)]  # > 64 KiB
    assert sum(map(len, big)) > 64 * 1024
    async with asgi_client(create_app(settings, bus=bus)) as client:
        resp = await _post(client, [*big, "bad"])
    assert resp.status_code == 422
    result = BatchResult.model_validate_json(resp.content)
    assert (result.accepted, result.rejected) == (120, 1)
    assert len(bus.published) == 120


async def test_no_request_is_traced_even_with_a_tracer_provider_configured(
    client: httpx.AsyncClient, device: Device, ingest_key: PrivateKey, monkeypatch: Any
) -> None:
    # An operator's OpenTelemetry setup must not turn every device request (its source
    # address and timing) into a span: the ingest switches FastAPI's own tracing off.
    import opentelemetry.trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(opentelemetry.trace, "_TRACER_PROVIDER", provider)
    assert opentelemetry.trace.get_tracer_provider() is provider
    assert (await _post(client, [device.item(ingest_key.public_key)])).status_code == 202
    assert (await client.get("/v1/ingest-key")).status_code == 200
    assert exporter.get_finished_spans() == ()


async def test_items_no_key_vouches_for_cost_one_audit_entry_per_reason(
    client: httpx.AsyncClient, settings: Any, device: Device, ingest_key: PrivateKey
) -> None:
    # Junk anyone can send (a one-character item is `not_base64`) must not write an
    # entry per item into a log that can never be pruned.
    stranger = PrivateKey.generate().public_key
    items = ["A"] * 5 + [device.item(stranger), device.item(stranger)]
    items.append(device.item(ingest_key.public_key))
    resp = await _post(client, items)
    assert resp.status_code == 422
    reasons = [r.reason for r in BatchResult.model_validate_json(resp.content).results]
    assert reasons == [RejectReason.NOT_BASE64] * 5 + [RejectReason.UNSEAL_FAILED] * 2 + [None]

    log = AuditLog(settings.state_dir / "audit.sqlite3")
    entries = [e for e in log.entries() if e.action == "envelope"]
    log.close()
    by_reason = {e.reason: e for e in entries}
    assert len(entries) == 3
    assert by_reason["not_base64"].detail.startswith("5 items of one request; the first: ")
    assert by_reason["unseal_failed"].detail.startswith("2 items of one request; the first: ")
    assert by_reason[None].decision == "accepted"


async def test_a_refusal_detail_never_carries_the_items_bulk(
    client: httpx.AsyncClient, settings: Any, device: Device, ingest_key: PrivateKey
) -> None:
    # A key of the signed wrapper is the sender's text; pydantic names it in the error.
    signed = json.loads(device.signed(b"{}"))
    signed["k" * 10_000] = 1
    item = seal(ingest_key.public_key, json.dumps(signed).encode())
    resp = await _post(client, [item])
    result = BatchResult.model_validate_json(resp.content).results[0]
    assert result.reason == RejectReason.MALFORMED_SIGNED
    assert result.detail is not None
    assert len(result.detail) <= 400
    assert "k" * 41 not in result.detail

    log = AuditLog(settings.state_dir / "audit.sqlite3")
    entries = [e for e in log.entries() if e.action == "envelope"]
    log.close()
    assert [len(e.detail or "") <= 400 for e in entries] == [True]
