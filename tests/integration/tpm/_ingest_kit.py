"""Driving the real ingest app as a TPM device would: enrollment, attestation, envelopes.

The device side uses `TpmKeyStore` on a real swtpm; the ingest is the real FastAPI app
(httpx AsyncClient over ASGI, with its lifespan), its registry and audit log on disk.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

import httpx
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from nacl.public import PublicKey

from client._tpm_keystore import KeyCertification, TpmKeyStore, TpmQuote
from tests.ingest.kit import seal

ZERO_HEX = "00" * 32
OPERATOR_TOKEN = "operator-secret-for-tests"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


class MovableClock:
    """Unix time plus an offset the test sets (attestation expiry without waiting)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def write_policy(
    path: Path,
    *,
    roots: list[Path],
    intermediates: list[Path],
    pcrs: dict[int, dict[str, Any]] | None = None,
    software: dict[str, bool] | None = None,
) -> Path:
    """An attestation policy file trusting the given CA files."""
    data = {
        "version": 1,
        "trust": {
            "roots": [str(p) for p in roots],
            "intermediates": [str(p) for p in intermediates],
        },
        "pcrs": pcrs or {0: {"allowed": [ZERO_HEX]}, 7: {"allowed": [ZERO_HEX]}},
        "lifetimes": {"attestation_seconds": 3600, "nonce_seconds": 30},
        "software_assurance": software or {"health": True, "performance": False, "content": False},
    }
    path.write_text(yaml.safe_dump(data))
    return path


def other_root(tmp_path: Path) -> Path:
    """A self-signed CA that never signed any EK."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "other-tpm-vendor-root")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path = tmp_path / "other-root.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


async def enroll(client: httpx.AsyncClient, store: TpmKeyStore) -> httpx.Response:
    m = store.enrollment_material()
    return await client.post(
        "/v1/enroll",
        json={
            "ek_public": b64(m.ek_public),
            "ek_certificate": b64(m.ek_certificate),
            "ak_public": b64(m.ak_public),
        },
    )


async def enroll_and_activate(client: httpx.AsyncClient, store: TpmKeyStore) -> str:
    challenge = await enroll(client, store)
    assert challenge.status_code == 200, challenge.text
    body = challenge.json()
    proof = store.activate_credential(unb64(body["credential_blob"]), unb64(body["secret"]))
    done = await client.post(
        "/v1/enroll/activate", json={"device_id": body["device_id"], "proof": b64(proof)}
    )
    assert done.status_code == 200, done.text
    return str(body["device_id"])


async def nonce_for(client: httpx.AsyncClient, device_id: str) -> bytes:
    resp = await client.post("/v1/attest/nonce", json={"device_id": device_id})
    assert resp.status_code == 200, resp.text
    return unb64(resp.json()["nonce"])


def attest_body(
    device_id: str,
    nonce: bytes,
    quote: TpmQuote,
    certification: KeyCertification,
    signing_public_area: bytes,
    signing_public_key: bytes,
) -> dict[str, Any]:
    return {
        "device_id": device_id,
        "nonce": b64(nonce),
        "quote": {
            "attest": b64(quote.attest),
            "signature": b64(quote.signature),
            "pcr_values": {str(i): b64(v) for i, v in quote.pcr_values.items()},
        },
        "certify": {"attest": b64(certification.attest), "signature": b64(certification.signature)},
        "signing_public_area": b64(signing_public_area),
        "signing_public_key": b64(signing_public_key),
    }


def evidence(store: TpmKeyStore, device_id: str, nonce: bytes) -> dict[str, Any]:
    """What a well-behaved device sends for `nonce`."""
    return attest_body(
        device_id,
        nonce,
        store.quote(nonce, (0, 7)),
        store.certify_signing_key(nonce),
        store.signing_public_area(),
        store.public_key(),
    )


async def attest(client: httpx.AsyncClient, store: TpmKeyStore, device_id: str) -> None:
    nonce = await nonce_for(client, device_id)
    resp = await client.post("/v1/attest", json=evidence(store, device_id, nonce))
    assert resp.status_code == 200, resp.text


def tpm_item(store: TpmKeyStore, ingest_key: PublicKey, envelope: dict[str, Any]) -> str:
    """A sealed batch item signed by the TPM key (alg ecdsa-p256)."""
    payload = json.dumps(envelope).encode()
    signed = json.dumps(
        {
            "v": 1,
            "alg": "ecdsa-p256",
            "public_key": b64(store.public_key()),
            "payload": b64(payload),
            "signature": b64(store.sign(payload)),
        }
    ).encode()
    return seal(ingest_key, signed)
