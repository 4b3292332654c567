"""Defence in depth: under the packaged attestation policy the ingest refuses content
signed by a software key (`software_key_refused`), whatever the client should have done,
and says so in the audit log; the same device's other tiers are accepted."""

from __future__ import annotations

from pathlib import Path

import httpx
from nacl.public import PrivateKey

from auditlog import AuditLog
from ingest import InMemoryEnvelopeBus
from tests.ingest.kit import Device, counter_aggregate


async def test_content_from_a_software_key_is_refused_and_audited(
    client: httpx.AsyncClient,
    bus: InMemoryEnvelopeBus,
    device: Device,
    ingest_key: PrivateKey,
    tmp_path: Path,
) -> None:
    content = {
        **counter_aggregate(),
        "signal": "prompt.personal_data",
        "tier": "content",
        "unit": "{prompt}",
        "attributes": {"kind": "email"},
    }
    tiers = ["health", "performance", "content"]
    with_content = device.envelope(aggregates=[content], consented_tiers=tiers)
    without = device.envelope(consented_tiers=tiers)  # a performance counter only
    items = [device.item(ingest_key.public_key, e) for e in (with_content, without)]

    resp = await client.post("/v1/envelopes", json={"envelopes": items})

    assert resp.status_code == 422
    first, second = resp.json()["results"]
    assert (first["status"], first["reason"]) == ("rejected", "software_key_refused")
    assert "content" in first["detail"]
    assert second["status"] == "accepted"
    (published,) = bus.published
    assert str(published.envelope.envelope_id) == second["envelope_id"]  # type: ignore[union-attr]
    log = AuditLog(tmp_path / "state" / "audit.sqlite3")
    try:
        (entry,) = log.entries(decision="rejected")
    finally:
        log.close()
    assert (entry.action, entry.reason, entry.device_id) == (
        "envelope",
        "software_key_refused",
        device.device_id,
    )
