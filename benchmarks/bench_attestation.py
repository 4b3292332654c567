"""Attestation on the ingest: verifications per second, and the envelope check's cost.

1. Attestation verifications per second: `verify_quote` + `verify_key_certification` on
   evidence recorded once from a real swtpm (started through the test harness).
2. The envelope check (`EnvelopeVerifier.verify`: unseal, signature, key standing,
   schema) for an Ed25519 (software) and an ECDSA P-256 (attested TPM key) envelope,
   next to the bare Ed25519 and P-256 signature verifications in the same run, with
   the ratios. Timings: best of `REPEATS` repeats of `NUMBER` calls.
3. On the client: an envelope signature by the TPM key (TPM2_Sign on swtpm) next to a
   software Ed25519 signature, the figures behind signing envelopes with the TPM key
   directly (docs/tpm.md).
"""

from __future__ import annotations

import base64
import json
import tempfile
import timeit
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from nacl.public import PrivateKey, PublicKey, SealedBox
from nacl.signing import SigningKey

from client._tpm_keystore import TpmKeyStore
from ingest import EnvelopeVerifier
from ingest._attested_keys import AttestedKeys
from ingest._registry import PendingEnrollment, SqliteDeviceRegistry
from ingest.attestation import PcrPolicy, verify_key_certification, verify_quote
from policies import load_policy
from schemas import device_id_for, key_fingerprint
from tests.harness.swtpm import SwtpmInstance

NUMBER = 2_000
REPEATS = 5
DEVICE = "tpm-" + "0" * 32


def _per_call_us(fn: Callable[[], object], number: int = NUMBER) -> float:
    return min(timeit.repeat(fn, number=number, repeat=REPEATS)) / number * 1e6


def _attestation_rate(work: Path) -> float:
    with SwtpmInstance() as tpm, TpmKeyStore(tpm.tcti, work / "keys") as store:
        nonce = b"n" * 32
        quote = store.quote(nonce, (0, 7))
        cert = store.certify_signing_key(nonce)
        ak_public = store.enrollment_material().ak_public
        area, point = store.signing_public_area(), store.public_key()
    policy = PcrPolicy((0, 7), {0: frozenset({bytes(32)})})

    def verify() -> None:
        verify_quote(
            ak_public, quote.attest, quote.signature, quote.pcr_values, nonce=nonce, policy=policy
        )
        verify_key_certification(
            ak_public,
            cert.attest,
            cert.signature,
            nonce=nonce,
            signing_public_area=area,
            presented_key=point,
        )

    return 1e6 / _per_call_us(verify, 500)


def _signing_costs(work: Path) -> dict[str, float]:
    payload = _envelope(DEVICE)
    software = SigningKey.generate()
    with SwtpmInstance() as tpm, TpmKeyStore(tpm.tcti, work / "sign-keys") as store:
        tpm_us = _per_call_us(lambda: store.sign(payload), 200)
    return {
        "TPM2_Sign P-256 (swtpm)": tpm_us,
        "Ed25519 sign (software)": _per_call_us(lambda: software.sign(payload)),
    }


def _envelope(device_id: str) -> bytes:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    return json.dumps(
        {
            "envelope_id": str(uuid.uuid4()),
            "device_id": device_id,
            "sequence": 1,
            "sent_at": (start + timedelta(hours=6)).isoformat(),
            "window_start": start.isoformat(),
            "window_end": (start + timedelta(hours=6)).isoformat(),
            "region": "bench",
            "policy_hash": load_policy().content_hash,
            "app": {"name": "bench", "version": "1"},
            "aggregates": [],
        }
    ).encode()


def _item(
    box: SealedBox[PublicKey], alg: str, public_key: bytes, payload: bytes, sig: bytes
) -> str:
    signed = json.dumps(
        {
            "v": 1,
            "alg": alg,
            "public_key": base64.b64encode(public_key).decode(),
            "payload": base64.b64encode(payload).decode(),
            "signature": base64.b64encode(sig).decode(),
        }
    ).encode()
    return base64.b64encode(box.encrypt(signed)).decode()


def _envelope_costs(work: Path) -> dict[str, float]:
    ingest_key = PrivateKey.generate()
    box = SealedBox(ingest_key.public_key)
    ed = SigningKey.generate()
    ed_pub = bytes(ed.verify_key)
    ed_payload = _envelope(device_id_for(ed_pub))
    ed_sig = ed.sign(ed_payload).signature

    p256 = ec.generate_private_key(ec.SECP256R1())
    point = p256.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    p_payload = _envelope(DEVICE)
    p_sig = p256.sign(p_payload, ec.ECDSA(hashes.SHA256()))

    registry = SqliteDeviceRegistry(work / "devices.sqlite3")
    registry.offer_challenge(
        PendingEnrollment(
            device_id=DEVICE,
            ek_fingerprint="0" * 64,
            ek_public=b"",
            ak_public=b"",
            ak_name=b"",
            challenge=b"c",
            expires_at=1.0,
        ),
        now=0.0,
    )
    registry.activate(DEVICE, challenge=b"c", now=0.0)
    registry.record_attestation(
        DEVICE,
        signing_key=point,
        signing_key_fp=key_fingerprint(point),
        now=0,
        expires_at=4e9,
        reset_count=0,
        restart_count=0,
        clock=0,
    )
    verifier = EnvelopeVerifier(
        ingest_key,
        region="bench",
        known_policy_hashes=[load_policy().content_hash],
        attested_keys=AttestedKeys(registry, ttl=3600),
    )
    now = datetime.now(UTC)
    ed_item = _item(box, "ed25519", ed_pub, ed_payload, ed_sig)
    p_item = _item(box, "ecdsa-p256", point, p_payload, p_sig)
    assert verifier.verify(p_item, received_at=now).__class__.__name__ == "Accepted"
    assert verifier.verify(ed_item, received_at=now).__class__.__name__ == "Accepted"
    verify_key = ed.verify_key
    p_public = p256.public_key()
    costs = {
        "bare Ed25519 verify": _per_call_us(lambda: verify_key.verify(ed_payload, ed_sig)),
        "bare P-256 verify": _per_call_us(
            lambda: p_public.verify(p_sig, p_payload, ec.ECDSA(hashes.SHA256()))
        ),
        "envelope check, ed25519": _per_call_us(lambda: verifier.verify(ed_item, received_at=now)),
        "envelope check, ecdsa-p256 (attested)": _per_call_us(
            lambda: verifier.verify(p_item, received_at=now)
        ),
    }
    registry.close()
    return costs


def main() -> int:
    """Print the figures; always 0 (no target to miss: these are reported, not gated)."""
    with tempfile.TemporaryDirectory(prefix="qw-bench-att-") as tmp:
        work = Path(tmp)
        rate = _attestation_rate(work)
        costs = _envelope_costs(work)
        signing = _signing_costs(work)
    print(f"attestation verifications (quote + certify): {rate:,.0f}/s")
    for name, us in costs.items():
        print(f"{name:<40} {us:8.1f} µs")
    ed_ratio = costs["envelope check, ed25519"] / costs["bare Ed25519 verify"]
    p_ratio = costs["envelope check, ecdsa-p256 (attested)"] / costs["bare P-256 verify"]
    tpm_vs_sw = costs["envelope check, ecdsa-p256 (attested)"] / costs["envelope check, ed25519"]
    print(f"envelope check / bare verify: ed25519 {ed_ratio:.2f}x, p-256 {p_ratio:.2f}x")
    print(f"attested p-256 envelope / ed25519 envelope: {tpm_vs_sw:.2f}x")
    for name, us in signing.items():
        print(f"{name:<40} {us:8.1f} µs  ({1e6 / us:,.0f}/s)")
    tpm_sign, sw_sign = signing.values()
    print(f"TPM sign / software sign: {tpm_sign / sw_sign:.0f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
