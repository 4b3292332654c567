"""Issue 8: enrollment changes nothing before the EK proof, on a real swtpm through the
real ingest app. Whoever holds a device's (public) EK certificate but not its TPM cannot
reset it or swap its AK; the device itself re-enrolls with a new AK, and its old
registration serves until the new one is proven."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from tpm2_pytss.constants import TPMA_OBJECT
from tpm2_pytss.types import TPM2B_PUBLIC

from auditlog import AuditLog
from client._tpm_keystore import TpmKeyStore
from ingest import IngestSettings, InMemoryEnvelopeBus, create_app, write_private_key
from ingest._registry import DeviceRecord, SqliteDeviceRegistry
from schemas import BatchResult
from tests.harness.swtpm import SwtpmInstance
from tests.ingest.kit import SERVED_POLICIES, Device, asgi_client
from tests.integration.tpm._ingest_kit import (
    attest,
    b64,
    enroll,
    enroll_and_activate,
    tpm_item,
    unb64,
    write_policy,
)

pytestmark = pytest.mark.integration

REGION = "eu-test"


class Ingest:
    def __init__(self, tmp_path: Path, swtpm: SwtpmInstance) -> None:
        self.state_dir = tmp_path / "state"
        self.key = write_private_key(tmp_path / "ingest.key")
        self.bus = InMemoryEnvelopeBus()
        self.sender = Device(REGION)  # one sequence and window series for the test
        self.settings = IngestSettings(
            policy_paths=SERVED_POLICIES,
            region=REGION,
            private_key_path=tmp_path / "ingest.key",
            state_dir=self.state_dir,
            attestation_policy_path=write_policy(
                tmp_path / "attestation.yaml",
                roots=[swtpm.root_cert],
                intermediates=[swtpm.issuer_cert],
            ),
        )

    def device(self, device_id: str) -> DeviceRecord | None:
        registry = SqliteDeviceRegistry(self.state_dir / "devices.sqlite3")
        try:
            return registry.get(device_id)
        finally:
            registry.close()

    def item(self, store: TpmKeyStore, device_id: str) -> str:
        envelope = self.sender.envelope(
            device_id=device_id, consent_hash="c" * 64, consented_tiers=["health", "performance"]
        )
        return tpm_item(store, self.key.public_key, envelope)


@pytest.fixture
def ingest(tmp_path: Path, swtpm: SwtpmInstance) -> Ingest:
    return Ingest(tmp_path, swtpm)


@pytest.fixture
async def client(ingest: Ingest) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(ingest.settings, bus=ingest.bus)
    async with asgi_client(app) as c:
        yield c


async def _send(client: httpx.AsyncClient, item: str) -> str:
    resp = await client.post("/v1/envelopes", json={"envelopes": [item]})
    result = BatchResult.model_validate_json(resp.content).results[0]
    return result.reason or result.status


def _forged_ak() -> bytes:
    """An AK public area made in software, claiming every attribute a TPM AK has."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    attributes = (
        TPMA_OBJECT.FIXEDTPM
        | TPMA_OBJECT.FIXEDPARENT
        | TPMA_OBJECT.SENSITIVEDATAORIGIN
        | TPMA_OBJECT.USERWITHAUTH
        | TPMA_OBJECT.RESTRICTED
        | TPMA_OBJECT.SIGN_ENCRYPT
    )
    return bytes(TPM2B_PUBLIC.from_pem(pem, objectAttributes=attributes).marshal())


async def test_an_ek_certificate_holder_without_the_tpm_changes_nothing(
    swtpm: SwtpmInstance, key_dir: Path, ingest: Ingest, client: httpx.AsyncClient
) -> None:
    with TpmKeyStore(swtpm.tcti, key_dir) as store:
        device_id = await enroll_and_activate(client, store)
        await attest(client, store, device_id)
        public = store.enrollment_material()  # what the EK certificate makes public
        before_attack = ingest.item(store, device_id)
        after_attack = ingest.item(store, device_id)
    assert await _send(client, before_attack) == "accepted"
    registered = ingest.device(device_id)

    # The attacker enrolls the device's EK with an AK of their own: a challenge comes
    # back, encrypted to an EK whose private half they do not have.
    challenge = await client.post(
        "/v1/enroll",
        json={
            "ek_public": b64(public.ek_public),
            "ek_certificate": b64(public.ek_certificate),
            "ak_public": b64(_forged_ak()),
        },
    )
    assert challenge.status_code == 200, challenge.text
    guesses = [
        await client.post("/v1/enroll/activate", json={"device_id": device_id, "proof": b64(p)})
        for p in (bytes(32), unb64(challenge.json()["secret"])[:32])
    ]

    assert [(g.status_code, g.json()["error"]) for g in guesses] == [
        (403, "bad_activation_proof"),
        (403, "bad_activation_proof"),
    ]
    assert ingest.device(device_id) == registered  # same AK, same key, same standing
    assert await _send(client, after_attack) == "accepted"
    with TpmKeyStore(swtpm.tcti, key_dir) as store:
        await attest(client, store, device_id)  # its AK still quotes for it


async def test_an_honest_re_enrollment_keeps_the_old_registration_until_proven(
    swtpm: SwtpmInstance, key_dir: Path, ingest: Ingest, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    with TpmKeyStore(swtpm.tcti, key_dir) as old:
        device_id = await enroll_and_activate(client, old)
        await attest(client, old, device_id)
        old_items = [ingest.item(old, device_id) for _ in range(2)]
        old_ak = old.enrollment_material().ak_public

    # The same TPM with a wiped client state: a new AK and signing key, the same EK.
    with TpmKeyStore(swtpm.tcti, tmp_path / "fresh-keys") as new:
        assert new.device_id == device_id
        challenge = (await enroll(client, new)).json()
        pending = ingest.device(device_id)
        while_pending = await _send(client, old_items[0])
        proof = new.activate_credential(
            unb64(challenge["credential_blob"]), unb64(challenge["secret"])
        )
        done = await client.post(
            "/v1/enroll/activate", json={"device_id": device_id, "proof": b64(proof)}
        )
        assert done.status_code == 200, done.text
        after_activation = await _send(client, old_items[1])
        await attest(client, new, device_id)
        new_item = ingest.item(new, device_id)
        new_ak = new.enrollment_material().ak_public

    assert pending is not None
    assert pending.ak_public == old_ak  # the challenge did not touch the registration
    assert while_pending == "accepted"
    assert after_activation == "key_not_attested"  # the old AK's key went with it
    assert await _send(client, new_item) == "accepted"
    record = ingest.device(device_id)
    assert record is not None
    assert record.ak_public == new_ak
    log = AuditLog(ingest.state_dir / "audit.sqlite3", read_only=True)
    actions = [(e.action, e.decision) for e in log.entries(device_id=device_id)]
    log.close()
    assert actions.count(("activate", "accepted")) == 2
    assert base64.b64encode(new_ak) != base64.b64encode(old_ak)
