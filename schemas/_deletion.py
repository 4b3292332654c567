"""Deletion requests: what a device sends when its user revokes consent for a tier.

`POST /v1/deletion-requests` carries a `SignedDeletionRequest`: the request's exact JSON
bytes and a signature over them by the device key (the key that signs the device's
envelopes: Ed25519 in software, or the attested TPM key, `ecdsa-p256`; so only the
device itself can ask to delete its data). It is not
sealed: it names a device and a tier, no telemetry, and travels over TLS. The ingest
publishes an `IngestedDeletionRequest` on the envelope bus (same topic and key as the
device's envelopes, so it stays in order with them) and the warehouse deletes the
device's rows of that tier.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from pydantic import AwareDatetime, Base64Bytes, BaseModel, ConfigDict, Field

from schemas._aggregates import Tier

__all__ = [
    "DeletionReceipt",
    "DeletionRequestV1",
    "IngestedDeletionRequest",
    "SignedDeletionRequest",
]

_ID = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")]
_HASH = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class DeletionRequestV1(BaseModel):
    """A device asks that every datum of `tier` it sent be deleted.

    `consent_hash` is the device's consent hash after the revocation, and
    `consent_version` the position of the signed revocation record in its consent
    history, so an auditor can tie the request to the record the user made.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = 1
    request_id: UUID
    device_id: _ID
    region: _ID
    tier: Tier
    requested_at: AwareDatetime
    consent_hash: _HASH
    consent_version: int = Field(ge=1)


class SignedDeletionRequest(BaseModel):
    """Request body: a deletion request's JSON bytes and a detached signature over them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    v: Literal[1] = 1
    alg: Literal["ed25519", "ecdsa-p256"] = Field(
        default="ed25519", description="as in SignedEnvelope: the key that signs envelopes"
    )
    public_key: Base64Bytes = Field(description="the device's signing key, as in SignedEnvelope")
    payload: Base64Bytes = Field(description="DeletionRequestV1 as UTF-8 JSON")
    signature: Base64Bytes


class IngestedDeletionRequest(BaseModel):
    """What the ingest publishes after verifying a deletion request."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    deletion: DeletionRequestV1
    received_at: datetime
    key_fingerprint: _HASH


class DeletionReceipt(BaseModel):
    """Response body of an accepted deletion request: it is durable on the bus."""

    request_id: UUID
    status: Literal["recorded"] = "recorded"
