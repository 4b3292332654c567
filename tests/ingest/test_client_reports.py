"""The ingest records the client reports devices send: one audit entry per report."""

from __future__ import annotations

import json

import httpx
from nacl.public import PrivateKey

from auditlog import AuditLog
from ingest import IngestSettings
from tests.ingest.kit import Device


async def test_a_client_report_is_recorded_in_the_audit_log(
    client: httpx.AsyncClient, device: Device, ingest_key: PrivateKey, settings: IngestSettings
) -> None:
    counts = {"negative_amount": 2, "rejected:clock_skew": 1, "tpm_unattested:unknown_ek_root": 1}
    reporting = device.envelope(client_report={"since": None, "counts": counts})
    plain = device.envelope()
    items = [device.item(ingest_key.public_key, e) for e in (reporting, plain)]
    resp = await client.post("/v1/envelopes", json={"envelopes": items})
    assert resp.status_code == 202, resp.text

    log = AuditLog(settings.state_dir / "audit.sqlite3")
    try:
        (entry,) = log.entries(action="client_report")
        assert (entry.decision, entry.device_id) == ("accepted", device.device_id)
        assert entry.detail is not None
        body = json.loads(entry.detail)
        assert body == {"envelope_id": reporting["envelope_id"], "since": None, "counts": counts}
        assert log.verify_chain().ok
    finally:
        log.close()


async def test_a_malformed_client_report_makes_the_envelope_invalid(
    client: httpx.AsyncClient, device: Device, ingest_key: PrivateKey
) -> None:
    bad = device.envelope(client_report={"counts": {"Free Text Reason": 1}})
    resp = await client.post(
        "/v1/envelopes", json={"envelopes": [device.item(ingest_key.public_key, bad)]}
    )
    assert resp.status_code == 422
    assert resp.json()["results"][0]["reason"] == "schema_invalid"
