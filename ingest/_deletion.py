"""Deletion requests (`POST /v1/deletion-requests`): verification.

A deletion request is verified like an envelope, least trusting first: shape, Ed25519
signature over the exact payload bytes, schema, device id bound to the key, region.
Only the device itself can ask to delete its data. An accepted request is published on
the envelope bus, keyed by device id like the device's envelopes, and answered 202 only
once the bus made it durable: that is what "recorded" means. The warehouse then deletes
the device's rows of the tier (`analytics.warehouse`).

Requests signed by a TPM key (`ecdsa-p256`) are refused for now: their key standing is
checked by the attestation registry, which this module does not consult yet.
"""

from __future__ import annotations

from datetime import datetime

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey
from pydantic import ValidationError

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

__all__ = ["MAX_DELETION_BYTES", "verify_deletion_request"]

MAX_DELETION_BYTES = 16 * 1024


def verify_deletion_request(
    body: bytes, *, region: str, received_at: datetime
) -> IngestedDeletionRequest:
    """Check a request body; raises `DeletionRejected` naming the reason."""
    try:
        signed = SignedDeletionRequest.model_validate_json(body)
    except ValidationError as exc:
        raise DeletionRejected(
            RejectReason.MALFORMED_SIGNED, summarize_validation_error(exc)
        ) from exc
    if signed.alg != "ed25519":
        raise DeletionRejected(
            RejectReason.MALFORMED_SIGNED,
            "deletion requests signed by a TPM key are not accepted yet; sign with ed25519",
        )
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
    try:
        request = DeletionRequestV1.model_validate_json(signed.payload)
    except ValidationError as exc:
        raise DeletionRejected(
            RejectReason.SCHEMA_INVALID, summarize_validation_error(exc)
        ) from exc
    expected = device_id_for(signed.public_key)
    if request.device_id != expected:
        raise DeletionRejected(
            RejectReason.DEVICE_KEY_MISMATCH,
            f"device_id {request.device_id!r} is not the id of the signing key ({expected!r})",
        )
    if request.region != region:
        raise DeletionRejected(
            RejectReason.WRONG_REGION,
            f"request is for region {request.region!r}; this ingest serves {region!r}",
        )
    return IngestedDeletionRequest(
        deletion=request,
        received_at=received_at,
        key_fingerprint=key_fingerprint(signed.public_key),
    )
