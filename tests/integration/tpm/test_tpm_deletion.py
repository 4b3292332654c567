"""Deletion requests signed by a TPM key (`ecdsa-p256`), on a real swtpm through the
real ingest app: accepted from the attested key of a device in good standing (even
after its attestation expired), refused otherwise, every decision in the audit log."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from client._tpm_keystore import TpmKeyStore
from schemas import IngestedDeletionRequest
from tests.harness.swtpm import SwtpmInstance
from tests.integration.tpm._ingest_kit import (
    OPERATOR_TOKEN,
    attest,
    b64,
    enroll_and_activate,
)
from tests.integration.tpm.test_ingest_attestation import REGION, Ingest

pytestmark = pytest.mark.integration


@pytest.fixture
def ingest(tmp_path: Path, swtpm: SwtpmInstance) -> Ingest:
    return Ingest(tmp_path, swtpm)


def _deletion(store: TpmKeyStore, signer_id: str, **overrides: Any) -> dict[str, Any]:
    """A deletion request signed by the TPM signing key, as the client sends it."""
    request: dict[str, Any] = {
        "schema_version": 1,
        "request_id": str(uuid.uuid4()),
        "device_id": signer_id,
        "region": REGION,
        "tier": "performance",
        "requested_at": datetime.now(UTC).isoformat(),
        "consent_hash": "ab" * 32,
        "consent_version": 2,
    }
    request.update(overrides)
    payload = json.dumps(request).encode()
    return {
        "v": 1,
        "alg": "ecdsa-p256",
        "public_key": b64(store.public_key()),
        "payload": b64(payload),
        "signature": b64(store.sign(payload)),
    }


def _refused(resp: httpx.Response, reason: str) -> None:
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"] == reason


async def test_a_deletion_signed_by_the_attested_tpm_key_is_recorded(
    swtpm: SwtpmInstance, key_dir: Path, ingest: Ingest
) -> None:
    async with ingest.client() as client:
        with TpmKeyStore(swtpm.tcti, key_dir) as store:
            device_id = await enroll_and_activate(client, store)
            await attest(client, store, device_id)
            body = _deletion(store, device_id)
        resp = await client.post("/v1/deletion-requests", json=body)

    assert resp.status_code == 202, resp.text
    assert resp.json()["status"] == "recorded"
    (item,) = ingest.bus.published
    assert isinstance(item, IngestedDeletionRequest)
    assert item.deletion.device_id == device_id
    assert str(item.deletion.request_id) == resp.json()["request_id"]
    (entry,) = ingest.audit(action="deletion", decision="accepted")
    assert entry.device_id == device_id
    assert entry.detail is not None
    assert "assurance=tpm" in entry.detail
    assert "tier=performance" in entry.detail


async def test_after_the_attestation_expired_a_deletion_is_still_recorded(
    swtpm: SwtpmInstance, key_dir: Path, ingest: Ingest
) -> None:
    async with ingest.client() as client:
        with TpmKeyStore(swtpm.tcti, key_dir) as store:
            device_id = await enroll_and_activate(client, store)
            ingest.clock.offset = -2 * 3600  # attested two hours ago, for one hour
            await attest(client, store, device_id)
            body = _deletion(store, device_id)
        resp = await client.post("/v1/deletion-requests", json=body)

    assert resp.status_code == 202, resp.text
    assert len(ingest.bus.published) == 1
    (entry,) = ingest.audit(action="deletion", decision="accepted")
    assert entry.detail is not None
    assert "attestation expired" in entry.detail


async def test_a_revoked_device_cannot_ask_for_deletion(
    swtpm: SwtpmInstance, key_dir: Path, ingest: Ingest
) -> None:
    async with ingest.client() as client:
        with TpmKeyStore(swtpm.tcti, key_dir) as store:
            device_id = await enroll_and_activate(client, store)
            await attest(client, store, device_id)
            body = _deletion(store, device_id)
        revoked = await client.post(
            f"/v1/devices/{device_id}/revoke",
            json={"reason": "reported stolen"},
            headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"},
        )
        assert revoked.status_code == 200, revoked.text
        resp = await client.post("/v1/deletion-requests", json=body)

    _refused(resp, "device_revoked")
    assert ingest.bus.published == []
    (entry,) = ingest.audit(action="deletion", decision="rejected")
    assert (entry.reason, entry.device_id) == ("device_revoked", device_id)


async def test_a_tpm_key_that_was_never_attested_is_refused(
    swtpm: SwtpmInstance, key_dir: Path, ingest: Ingest
) -> None:
    async with ingest.client() as client:
        with TpmKeyStore(swtpm.tcti, key_dir) as store:
            device_id = await enroll_and_activate(client, store)  # enrolled, not attested
            body = _deletion(store, device_id)
        resp = await client.post("/v1/deletion-requests", json=body)

    _refused(resp, "key_not_attested")
    assert ingest.bus.published == []
    assert ingest.audit(action="deletion", decision="rejected", reason="key_not_attested")


async def test_the_attested_key_cannot_delete_another_devices_data_or_be_forged(
    swtpm: SwtpmInstance, key_dir: Path, ingest: Ingest
) -> None:
    other_device = "tpm-" + "0" * 32
    async with ingest.client() as client:
        with TpmKeyStore(swtpm.tcti, key_dir) as store:
            device_id = await enroll_and_activate(client, store)
            await attest(client, store, device_id)
            someone_else = _deletion(store, device_id, device_id=other_device)
            forged = _deletion(store, device_id)
            forged["signature"] = _deletion(store, device_id)["signature"]  # other payload
        mismatch = await client.post("/v1/deletion-requests", json=someone_else)
        bad = await client.post("/v1/deletion-requests", json=forged)

    _refused(mismatch, "device_key_mismatch")
    _refused(bad, "bad_signature")
    assert ingest.bus.published == []
    reasons = [e.reason for e in ingest.audit(action="deletion", decision="rejected")]
    assert reasons == ["device_key_mismatch", "bad_signature"]
    assert all(e.device_id == device_id for e in ingest.audit(action="deletion"))
