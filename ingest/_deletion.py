"""Deletion requests (`POST /v1/deletion-requests`): verification.

A deletion request is verified like an envelope, least trusting first: shape, the key's
standing, the signature over the exact payload bytes, schema, device id bound to the
key, region. Only the device itself can ask to delete its data. An accepted request is
published on the envelope bus, keyed by device id like the device's envelopes, and
answered 202 only once the bus made it durable: that is what "recorded" means. The
warehouse then deletes the device's rows of the tier (`analytics.warehouse`).

Keys, as for envelopes:

- `ed25519` (software): the device id must be `schemas.device_id_for(key)`.
- `ecdsa-p256` (TPM): the key must be the signing key the registry holds as attested
  for a device (`AttestedKeys`, the envelope path's cache), that device must not be
  revoked (`device_revoked`), and the request must name it. An unknown or superseded
  key is `key_not_attested`. An *expired* attestation is accepted, unlike for
  envelopes: the key is still non-exportable and bound to that device's TPM, a
  deletion can only remove that device's own data, and the client sends deletion
  requests before it re-attests, so refusing would lose the user's request for good
  (a 4xx is final). The decision notes the expiry for the audit log.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey
from pydantic import ValidationError

from ingest._attested_keys import AttestedKey, AttestedKeys
from ingest._errors import DeletionRejected
from ingest._verify import summarize_validation_error
from schemas import (
    DeletionRequestV1,
    IngestedDeletionRequest,
    RejectReason,
    SignedDeletionRequest,
    device_id_for,
    key_fingerprint,
)

__all__ = ["MAX_DELETION_BYTES", "VerifiedDeletion", "verify_deletion_request"]

MAX_DELETION_BYTES = 16 * 1024

_P256_POINT_BYTES = 65
_P256_MAX_DER_SIG_BYTES = 72
_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())


@dataclass(frozen=True, slots=True)
class VerifiedDeletion:
    """An accepted deletion request, and what the audit log should say about its key."""

    item: IngestedDeletionRequest
    assurance: str
    """`software` (ed25519) or `tpm` (an attested ecdsa-p256 key)."""
    note: str | None = None
    """E.g. that the device's attestation had expired (accepted all the same)."""


def verify_deletion_request(
    body: bytes,
    *,
    region: str,
    received_at: datetime,
    attested_keys: AttestedKeys | None = None,
) -> VerifiedDeletion:
    """Check a request body; raises `DeletionRejected` naming the reason.

    `attested_keys` is where `ecdsa-p256` keys are looked up (None: every TPM-signed
    request is `key_not_attested`). It may read the registry: call off the event loop.
    """
    try:
        signed = SignedDeletionRequest.model_validate_json(body)
    except ValidationError as exc:
        raise DeletionRejected(
            RejectReason.MALFORMED_SIGNED, summarize_validation_error(exc)
        ) from exc
    attested: AttestedKey | None = None
    if signed.alg == "ecdsa-p256":
        attested = _check_tpm_signed(signed, attested_keys)
        expected = attested.device_id
    else:
        _check_ed25519_signed(signed)
        expected = device_id_for(signed.public_key)
    try:
        request = DeletionRequestV1.model_validate_json(signed.payload)
    except ValidationError as exc:
        raise DeletionRejected(
            RejectReason.SCHEMA_INVALID, summarize_validation_error(exc), device_id=expected
        ) from exc
    if request.device_id != expected:
        raise DeletionRejected(
            RejectReason.DEVICE_KEY_MISMATCH,
            f"device_id {request.device_id!r} is not the id of the signing key ({expected!r})",
            device_id=expected,
        )
    if request.region != region:
        raise DeletionRejected(
            RejectReason.WRONG_REGION,
            f"request is for region {request.region!r}; this ingest serves {region!r}",
            device_id=expected,
        )
    note = None
    if attested is not None and received_at.timestamp() >= attested.expires_at:
        expired = datetime.fromtimestamp(attested.expires_at, UTC).isoformat()
        note = f"attestation expired at {expired}; accepted: a deletion only removes own data"
    return VerifiedDeletion(
        IngestedDeletionRequest(
            deletion=request,
            received_at=received_at,
            key_fingerprint=key_fingerprint(signed.public_key),
        ),
        assurance="software" if attested is None else "tpm",
        note=note,
    )


def _check_ed25519_signed(signed: SignedDeletionRequest) -> None:
    if len(signed.public_key) != 32 or len(signed.signature) != 64:
        raise DeletionRejected(
            RejectReason.MALFORMED_SIGNED, "an ed25519 key is 32 bytes and a signature 64"
        )
    try:
        VerifyKey(signed.public_key).verify(signed.payload, signed.signature)
    except BadSignatureError as exc:
        raise DeletionRejected(
            RejectReason.BAD_SIGNATURE, "the signature does not match the payload and key"
        ) from exc


def _check_tpm_signed(
    signed: SignedDeletionRequest, attested_keys: AttestedKeys | None
) -> AttestedKey:
    """The key's standing first (the registry), then the ECDSA signature."""
    key_bytes = signed.public_key
    if len(key_bytes) != _P256_POINT_BYTES or key_bytes[0] != 0x04:
        raise DeletionRejected(
            RejectReason.MALFORMED_SIGNED,
            f"an ecdsa-p256 public_key is a {_P256_POINT_BYTES}-byte uncompressed point",
        )
    if len(signed.signature) > _P256_MAX_DER_SIG_BYTES:
        raise DeletionRejected(
            RejectReason.MALFORMED_SIGNED,
            f"an ecdsa-p256 signature is DER of at most {_P256_MAX_DER_SIG_BYTES} bytes",
        )
    key = attested_keys.lookup(key_bytes) if attested_keys is not None else None
    if key is None:
        raise DeletionRejected(
            RejectReason.KEY_NOT_ATTESTED,
            "this TPM key is not the currently attested signing key of any device",
        )
    if key.revoked:
        raise DeletionRejected(
            RejectReason.DEVICE_REVOKED,
            f"device {key.device_id} is revoked",
            device_id=key.device_id,
        )
    try:
        key.public_key.verify(signed.signature, signed.payload, _ECDSA_SHA256)
    except InvalidSignature as exc:
        raise DeletionRejected(
            RejectReason.BAD_SIGNATURE,
            "the signature does not match the payload and key",
            device_id=key.device_id,
        ) from exc
    return key
