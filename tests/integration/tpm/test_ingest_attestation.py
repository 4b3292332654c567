"""Issue 3's acceptance, on a real swtpm through the real ingest app: every refusal is
its own 4xx reason code and an audit entry; the happy path yields `assurance: tpm`."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest
from tpm2_pytss.constants import TPMA_OBJECT

from auditlog import AuditEntry, AuditLog
from client._tpm_keystore import SIGNING_KEY_ATTRIBUTES, TpmKeyStore
from ingest import IngestSettings, InMemoryEnvelopeBus, create_app, write_private_key
from schemas import BatchResult, IngestedEnvelope
from tests.harness.swtpm import SwtpmInstance
from tests.ingest.kit import SERVED_POLICIES, Device, asgi_client
from tests.integration.tpm._device import certify_foreign_key, extend_pcr
from tests.integration.tpm._ingest_kit import (
    OPERATOR_TOKEN,
    MovableClock,
    attest,
    attest_body,
    b64,
    enroll,
    enroll_and_activate,
    evidence,
    nonce_for,
    other_root,
    tpm_item,
    write_policy,
)

pytestmark = pytest.mark.integration

REGION = "eu-test"


class Ingest:
    """The app's files and knobs, shared by a test's clients."""

    def __init__(self, tmp_path: Path, swtpm: SwtpmInstance) -> None:
        self.tmp_path = tmp_path
        self.key = write_private_key(tmp_path / "ingest.key")
        self.bus = InMemoryEnvelopeBus()
        self.clock = MovableClock()
        self.policy = write_policy(
            tmp_path / "attestation.yaml",
            roots=[swtpm.root_cert],
            intermediates=[swtpm.issuer_cert],
        )

    @property
    def state_dir(self) -> Path:
        return self.tmp_path / "state"

    def settings(self) -> IngestSettings:
        return IngestSettings(
            policy_paths=SERVED_POLICIES,
            region=REGION,
            private_key_path=self.tmp_path / "ingest.key",
            state_dir=self.state_dir,
            attestation_policy_path=self.policy,
            operator_token=OPERATOR_TOKEN,
        )

    def client(self) -> AbstractAsyncContextManager[httpx.AsyncClient]:
        app = create_app(self.settings(), bus=self.bus, attestation_clock=self.clock)
        return asgi_client(app)

    def audit(self, **query: Any) -> list[AuditEntry]:
        log = AuditLog(self.state_dir / "audit.sqlite3")
        try:
            return log.entries(**query)
        finally:
            log.close()

    def envelope(self, device_id: str) -> dict[str, Any]:
        device = Device(REGION)
        # Consent for the tiers it carries (issue 4's check runs after the key checks).
        return device.envelope(
            device_id=device_id,
            consent_hash="c" * 64,
            consented_tiers=["health", "performance"],
        )


@pytest.fixture
def ingest(tmp_path: Path, swtpm: SwtpmInstance) -> Ingest:
    return Ingest(tmp_path, swtpm)


@pytest.fixture
async def client(ingest: Ingest) -> AsyncIterator[httpx.AsyncClient]:
    async with ingest.client() as c:
        yield c


def _refused(resp: httpx.Response, status: int, reason: str) -> None:
    assert resp.status_code == status, resp.text
    assert resp.json()["error"] == reason


def _audited(ingest: Ingest, action: str, reason: str, device_id: str | None = None) -> None:
    entries = ingest.audit(action=action, decision="rejected", reason=reason)
    assert entries, f"no audit entry for {action} rejected {reason}"
    if device_id is not None:
        assert entries[-1].device_id == device_id


async def _post_items(client: httpx.AsyncClient, items: list[str]) -> BatchResult:
    resp = await client.post("/v1/envelopes", json={"envelopes": items})
    return BatchResult.model_validate_json(resp.content)


# --- the happy path --------------------------------------------------------------------


async def test_enroll_attest_and_send_a_tpm_signed_envelope(
    swtpm: SwtpmInstance, key_dir: Path, ingest: Ingest, client: httpx.AsyncClient
) -> None:
    with TpmKeyStore(swtpm.tcti, key_dir) as store:
        device_id = await enroll_and_activate(client, store)
        await attest(client, store, device_id)
        item = tpm_item(store, ingest.key.public_key, ingest.envelope(device_id))
    result = await _post_items(client, [item])

    assert (result.accepted, result.rejected) == (1, 0)
    (published,) = ingest.bus.published
    assert isinstance(published, IngestedEnvelope)
    assert published.assurance == "tpm"
    assert published.envelope.device_id == device_id
    assert device_id.startswith("tpm-")
    actions = [(e.action, e.decision) for e in ingest.audit(device_id=device_id)]
    assert actions == [
        ("enroll", "accepted"),
        ("activate", "accepted"),
        ("nonce", "accepted"),
        ("attest", "accepted"),
        ("envelope", "accepted"),
    ]
    log = AuditLog(ingest.state_dir / "audit.sqlite3")
    try:
        assert log.verify_chain().ok
    finally:
        log.close()


async def test_tampering_with_an_audit_entry_is_detected(
    swtpm: SwtpmInstance, key_dir: Path, ingest: Ingest, client: httpx.AsyncClient
) -> None:
    with TpmKeyStore(swtpm.tcti, key_dir) as store:
        device_id = await enroll_and_activate(client, store)
    db = sqlite3.connect(ingest.state_dir / "audit.sqlite3")
    with db:
        db.execute("UPDATE audit SET decision = 'rejected' WHERE seq = 1")
    db.close()

    log = AuditLog(ingest.state_dir / "audit.sqlite3")
    try:
        report = log.verify_chain()
    finally:
        log.close()

    assert not report.ok
    assert report.broken_at == 1
    assert device_id


async def test_attestation_survives_an_ingest_restart(
    swtpm: SwtpmInstance, key_dir: Path, ingest: Ingest
) -> None:
    with TpmKeyStore(swtpm.tcti, key_dir) as store:
        async with ingest.client() as first:
            device_id = await enroll_and_activate(first, store)
            await attest(first, store, device_id)
        item = tpm_item(store, ingest.key.public_key, ingest.envelope(device_id))

    async with ingest.client() as second:
        result = await _post_items(second, [item])

    assert result.accepted == 1
    published = ingest.bus.published[-1]
    assert isinstance(published, IngestedEnvelope)
    assert published.assurance == "tpm"


# --- enrollment refusals ---------------------------------------------------------------


async def test_ek_certificate_from_an_unknown_root(
    swtpm: SwtpmInstance, key_dir: Path, ingest: Ingest, tmp_path: Path
) -> None:
    write_policy(ingest.policy, roots=[other_root(tmp_path)], intermediates=[])
    async with ingest.client() as client:
        with TpmKeyStore(swtpm.tcti, key_dir) as store:
            resp = await enroll(client, store)

    _refused(resp, 403, "unknown_ek_root")
    _audited(ingest, "enroll", "unknown_ek_root")
    assert ingest.audit(reason="unknown_ek_root")[0].device_id is not None


async def test_wrong_activate_credential_proof(
    swtpm: SwtpmInstance, key_dir: Path, ingest: Ingest, client: httpx.AsyncClient
) -> None:
    with TpmKeyStore(swtpm.tcti, key_dir) as store:
        challenge = (await enroll(client, store)).json()
    resp = await client.post(
        "/v1/enroll/activate",
        json={"device_id": challenge["device_id"], "proof": b64(bytes(32))},
    )

    _refused(resp, 403, "bad_activation_proof")
    _audited(ingest, "activate", "bad_activation_proof", challenge["device_id"])
    nonce = await client.post("/v1/attest/nonce", json={"device_id": challenge["device_id"]})
    _refused(nonce, 409, "device_not_enrolled")


# --- attestation refusals --------------------------------------------------------------


async def test_reused_nonce(
    swtpm: SwtpmInstance, key_dir: Path, ingest: Ingest, client: httpx.AsyncClient
) -> None:
    with TpmKeyStore(swtpm.tcti, key_dir) as store:
        device_id = await enroll_and_activate(client, store)
        nonce = await nonce_for(client, device_id)
        body = evidence(store, device_id, nonce)
    assert (await client.post("/v1/attest", json=body)).status_code == 200
    resp = await client.post("/v1/attest", json=body)

    _refused(resp, 409, "nonce_reused")
    _audited(ingest, "attest", "nonce_reused", device_id)


async def test_expired_nonce(
    swtpm: SwtpmInstance, key_dir: Path, ingest: Ingest, client: httpx.AsyncClient
) -> None:
    with TpmKeyStore(swtpm.tcti, key_dir) as store:
        device_id = await enroll_and_activate(client, store)
        nonce = await nonce_for(client, device_id)
        body = evidence(store, device_id, nonce)
    ingest.clock.offset += 31  # the policy's nonce lifetime is 30 s
    resp = await client.post("/v1/attest", json=body)

    _refused(resp, 409, "nonce_expired")
    _audited(ingest, "attest", "nonce_expired", device_id)


async def test_quote_signed_by_another_ak(
    swtpm: SwtpmInstance, key_dir: Path, ingest: Ingest, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    with TpmKeyStore(swtpm.tcti, key_dir) as store:
        device_id = await enroll_and_activate(client, store)
        nonce = await nonce_for(client, device_id)
        body = evidence(store, device_id, nonce)
    with TpmKeyStore(swtpm.tcti, tmp_path / "impostor") as impostor:
        forged = impostor.quote(nonce, (0, 7))
    body["quote"] = {
        "attest": b64(forged.attest),
        "signature": b64(forged.signature),
        "pcr_values": {str(i): b64(v) for i, v in forged.pcr_values.items()},
    }
    resp = await client.post("/v1/attest", json=body)

    _refused(resp, 403, "quote_bad_signature")
    _audited(ingest, "attest", "quote_bad_signature", device_id)


async def test_pcr_value_outside_policy(
    swtpm: SwtpmInstance, key_dir: Path, ingest: Ingest, client: httpx.AsyncClient
) -> None:
    extend_pcr(swtpm.tcti, 7, b"an unexpected bootloader")
    with TpmKeyStore(swtpm.tcti, key_dir) as store:
        device_id = await enroll_and_activate(client, store)
        nonce = await nonce_for(client, device_id)
        resp = await client.post("/v1/attest", json=evidence(store, device_id, nonce))

    _refused(resp, 403, "pcr_not_allowed")
    _audited(ingest, "attest", "pcr_not_allowed", device_id)


@pytest.mark.parametrize(
    ("attributes", "reason"),
    [
        pytest.param(
            SIGNING_KEY_ATTRIBUTES | TPMA_OBJECT.RESTRICTED,
            "signing_key_restricted",
            id="restricted",
        ),
        pytest.param(
            TPMA_OBJECT.SENSITIVEDATAORIGIN | TPMA_OBJECT.USERWITHAUTH | TPMA_OBJECT.SIGN_ENCRYPT,
            "signing_key_exportable",
            id="exportable",
        ),
    ],
)
async def test_weaker_signing_key(
    swtpm: SwtpmInstance,
    key_dir: Path,
    ingest: Ingest,
    client: httpx.AsyncClient,
    attributes: TPMA_OBJECT,
    reason: str,
) -> None:
    with TpmKeyStore(swtpm.tcti, key_dir) as store:
        device_id = await enroll_and_activate(client, store)
        nonce = await nonce_for(client, device_id)
        quote = store.quote(nonce, (0, 7))
    point, area, certification = certify_foreign_key(swtpm.tcti, key_dir, attributes, nonce)
    body = attest_body(device_id, nonce, quote, certification, area, point)
    resp = await client.post("/v1/attest", json=body)

    _refused(resp, 403, reason)
    _audited(ingest, "attest", reason, device_id)


# --- envelope refusals -----------------------------------------------------------------


async def test_envelope_after_attestation_expiry(
    swtpm: SwtpmInstance, key_dir: Path, ingest: Ingest, client: httpx.AsyncClient
) -> None:
    with TpmKeyStore(swtpm.tcti, key_dir) as store:
        device_id = await enroll_and_activate(client, store)
        ingest.clock.offset = -2 * 3600  # attested two hours ago, for one hour
        await attest(client, store, device_id)
        item = tpm_item(store, ingest.key.public_key, ingest.envelope(device_id))
    result = await _post_items(client, [item])

    assert result.rejected == 1
    assert result.results[0].reason == "attestation_expired"
    assert ingest.bus.published == []
    _audited(ingest, "envelope", "attestation_expired", device_id)


async def test_envelope_from_a_revoked_device(
    swtpm: SwtpmInstance, key_dir: Path, ingest: Ingest, client: httpx.AsyncClient
) -> None:
    with TpmKeyStore(swtpm.tcti, key_dir) as store:
        device_id = await enroll_and_activate(client, store)
        await attest(client, store, device_id)
        before = tpm_item(store, ingest.key.public_key, ingest.envelope(device_id))
        after = tpm_item(store, ingest.key.public_key, ingest.envelope(device_id))
    assert (await _post_items(client, [before])).accepted == 1

    no_token = await client.post(f"/v1/devices/{device_id}/revoke", json={"reason": "stolen"})
    _refused(no_token, 401, "operator_unauthorized")
    revoked = await client.post(
        f"/v1/devices/{device_id}/revoke",
        json={"reason": "reported stolen"},
        headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"},
    )
    assert revoked.status_code == 200, revoked.text
    result = await _post_items(client, [after])

    assert result.results[0].reason == "device_revoked"
    assert len(ingest.bus.published) == 1
    _audited(ingest, "envelope", "device_revoked", device_id)
    assert ingest.audit(action="revoke", decision="accepted")[0].detail == "reported stolen"
    nonce = await client.post("/v1/attest/nonce", json={"device_id": device_id})
    _refused(nonce, 403, "device_revoked")


async def test_software_key_where_policy_requires_tpm(
    ingest: Ingest, client: httpx.AsyncClient
) -> None:
    device = Device(REGION)  # Ed25519; its envelope carries a performance-tier counter
    result = await _post_items(client, [device.item(ingest.key.public_key)])

    assert result.results[0].reason == "software_key_refused"
    assert ingest.bus.published == []
    _audited(ingest, "envelope", "software_key_refused", device.device_id)


async def test_tpm_key_never_attested_is_refused(
    swtpm: SwtpmInstance, key_dir: Path, ingest: Ingest, client: httpx.AsyncClient
) -> None:
    with TpmKeyStore(swtpm.tcti, key_dir) as store:
        device_id = await enroll_and_activate(client, store)
        item = tpm_item(store, ingest.key.public_key, ingest.envelope(device_id))
    result = await _post_items(client, [item])

    assert result.results[0].reason == "key_not_attested"
    _audited(ingest, "envelope", "key_not_attested")
