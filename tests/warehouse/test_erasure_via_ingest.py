"""A consent revocation through the real HTTP ingest (embedded sink): the ingest's audit
log holds an entry for each deletion request it accepted, the warehouse records it, and
once the ingest has stopped the revoked values are not in the warehouse's files."""

from __future__ import annotations

import base64
import json
import struct
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from nacl.public import PublicKey

from analytics import build_auditor_report, open_warehouse
from auditlog import AuditLog
from ingest import DuckDBSink, IngestSettings, InProcessEnvelopeBus, create_app
from tests.ingest.kit import FIRST_WINDOW, SERVED_POLICIES, Device, asgi_client, counter_aggregate
from tests.warehouse._bytes import warehouse_bytes

DEVICES = 4


def _deletion(device: Device, tier: str) -> dict[str, Any]:
    request = {
        "schema_version": 1,
        "request_id": str(uuid.uuid4()),
        "device_id": device.device_id,
        "region": device.region,
        "tier": tier,
        "requested_at": (FIRST_WINDOW + timedelta(days=1)).isoformat(),
        "consent_hash": "ab" * 32,
        "consent_version": 2,
    }
    payload = json.dumps(request).encode()
    return {
        "v": 1,
        "alg": "ed25519",
        "public_key": base64.b64encode(device.public_key).decode(),
        "payload": base64.b64encode(payload).decode(),
        "signature": base64.b64encode(device.key.sign(payload).signature).decode(),
    }


def _found(path: Path, values: list[float]) -> int:
    data = warehouse_bytes(path)
    return sum(struct.pack("<d", v) in data for v in values)


async def test_a_revocation_through_the_ingest_is_logged_recorded_and_erased(
    tmp_path: Path,
) -> None:
    settings = IngestSettings(
        policy_paths=SERVED_POLICIES, region="eu-test", state_dir=tmp_path / "state"
    )
    db = settings.resolved_warehouse_path
    db.parent.mkdir(parents=True)
    sink = DuckDBSink(db, group="g", compact_interval=3600)
    # Stored uncompressed, every value is in the file as its 8 bytes (see
    # test_deleted_means_gone): the scan below can see what it looks for.
    sink.connection.execute("SET force_compression = 'uncompressed'")
    app = create_app(settings, bus=InProcessEnvelopeBus(sink))
    revoking = [Device("eu-test") for _ in range(DEVICES)]
    keeping = [Device("eu-test") for _ in range(DEVICES)]
    # Whole numbers (discrete Laplace releases nothing else), unusual enough that their
    # 8 bytes appear in the file only as these values.
    gone = [17011.0 + 7 * i for i in range(DEVICES)]
    kept = [19013.0 + 7 * i for i in range(DEVICES)]
    request_ids = []
    async with asgi_client(app) as client:
        key = PublicKey(base64.b64decode((await client.get("/v1/ingest-key")).json()["public_key"]))
        items = [
            device.item(key, device.envelope(aggregates=[counter_aggregate(value)]))
            for device, value in [
                *zip(revoking, gone, strict=True),
                *zip(keeping, kept, strict=True),
            ]
        ]
        resp = await client.post("/v1/envelopes", json={"envelopes": items})
        assert resp.status_code == 202, resp.text
        assert all(r["status"] == "accepted" for r in resp.json()["results"]), resp.text
        tier = counter_aggregate()["tier"]
        for device in revoking:
            resp = await client.post("/v1/deletion-requests", json=_deletion(device, tier))
            assert resp.status_code == 202, resp.text
            request_ids.append(resp.json()["request_id"])
    # The ingest has stopped and closed the sink: the file is as an auditor finds it.

    assert _found(db, gone) == 0
    assert _found(db, kept) == DEVICES

    audit = AuditLog(settings.state_dir / "audit.sqlite3", read_only=True)
    conn = open_warehouse(db)
    try:
        logged = audit.entries(action="deletion", decision="accepted")
        report = build_auditor_report(conn, audit=audit, source=str(db))
    finally:
        conn.close()
        audit.close()
    assert sorted(e.device_id or "" for e in logged) == sorted(d.device_id for d in revoking)
    assert report.chain is not None
    assert report.chain.ok
    assert report.erasures_pending == 0
    deletions = report.deletions.sort("request_id")
    assert deletions["request_id"].to_list() == sorted(request_ids)
    assert set(deletions["status"].to_list()) == {"applied, erased"}
    assert deletions["in_audit_log"].to_list() == [True] * DEVICES
    assert deletions["rows_deleted"].to_list() == [1] * DEVICES
