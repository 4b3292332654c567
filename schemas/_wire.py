"""The HTTP wire format of `POST /v1/envelopes`.

A device sends a batch of sealed envelopes. Each item is
``base64(SealedBox(ingest_public_key).encrypt(SignedEnvelope JSON))``: only the ingest
can open it, and the signature inside covers the exact envelope bytes.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal
from uuid import UUID

from pydantic import Base64Bytes, BaseModel, ConfigDict, Field

__all__ = [
    "MAX_BATCH",
    "MAX_SEALED_BYTES",
    "BatchResult",
    "EnvelopeBatch",
    "ItemResult",
    "RejectReason",
    "SignedEnvelope",
]

MAX_BATCH = 256
MAX_SEALED_BYTES = 512 * 1024


class SignedEnvelope(BaseModel):
    """An envelope's JSON bytes and a detached signature over exactly those bytes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    v: Literal[1] = 1
    alg: Literal["ed25519", "ecdsa-p256"] = Field(
        default="ed25519",
        description="ed25519: a software device key; ecdsa-p256: a TPM-resident key "
        "(ECDSA P-256 over SHA-256) that the ingest saw certified by an attested TPM",
    )
    public_key: Base64Bytes = Field(
        description="ed25519: the raw 32-byte verify key; ecdsa-p256: the uncompressed "
        "SEC1 point (65 bytes, 0x04 || X || Y)"
    )
    payload: Base64Bytes = Field(description="EnvelopeV1 as UTF-8 JSON")
    signature: Base64Bytes = Field(description="ed25519: 64 bytes; ecdsa-p256: DER-encoded (r, s)")


class EnvelopeBatch(BaseModel):
    """Request body: sealed envelopes, base64 encoded."""

    model_config = ConfigDict(extra="forbid")

    envelopes: list[Annotated[str, Field(min_length=1)]] = Field(min_length=1)


class RejectReason(StrEnum):
    """Machine-readable reasons a batch or an item is refused. Stable: clients key on them."""

    MALFORMED_BODY = "malformed_body"
    BATCH_TOO_LARGE = "batch_too_large"
    ITEM_TOO_LARGE = "item_too_large"
    NOT_BASE64 = "not_base64"
    UNSEAL_FAILED = "unseal_failed"
    MALFORMED_SIGNED = "malformed_signed_envelope"
    BAD_SIGNATURE = "bad_signature"
    SCHEMA_INVALID = "schema_invalid"
    DEVICE_KEY_MISMATCH = "device_key_mismatch"
    UNKNOWN_POLICY = "unknown_policy"
    WRONG_REGION = "wrong_region"
    DUPLICATE = "duplicate"
    CONSENT_MISSING = "consent_missing"
    CLOCK_SKEW = "clock_skew"
    # key assurance (TPM attestation, issue 3)
    KEY_NOT_ATTESTED = "key_not_attested"
    ATTESTATION_EXPIRED = "attestation_expired"
    DEVICE_REVOKED = "device_revoked"
    SOFTWARE_KEY_REFUSED = "software_key_refused"
    # Prio3 reports (secure aggregation, issue 7)
    UNKNOWN_TASK = "unknown_task"
    REPORT_INVALID = "report_invalid"
    SIGNAL_INVALID = "signal_invalid"
    # per-device admission (issue 8): window, order, one contribution, epsilon budget
    WINDOW_MISALIGNED = "window_misaligned"
    SEQUENCE_NOT_INCREASING = "sequence_not_increasing"
    DUPLICATE_WINDOW = "duplicate_window"
    POLICY_NOT_SERVED = "policy_not_served"
    BUDGET_EXCEEDED = "budget_exceeded"
    # the policy's retention (issue 8, review s18)
    WINDOW_EXPIRED = "window_expired"


class ItemResult(BaseModel):
    """Outcome of one item of a batch, by its index in the request."""

    index: int
    status: Literal["accepted", "rejected"]
    envelope_id: UUID | None = None
    reason: RejectReason | None = None
    detail: str | None = None


class BatchResult(BaseModel):
    """Response body. Accepted items are durable in the bus before this is sent."""

    accepted: int
    rejected: int
    results: list[ItemResult]
