"""Deletion requests (`POST /v1/deletion-requests`): verification.

A deletion request is verified like an envelope, least trusting first: shape, the key's
standing, the signature over the exact payload bytes, schema (read strictly, as an
envelope's payload is: each field of the JSON type the published schema gives), device
id bound to the key, region. Only the device itself can ask to delete its data. An
accepted request is published on the envelope bus, keyed by device id like the device's
envelopes, and answered 202 only once the bus made it durable: that is what "recorded"
means. The warehouse then deletes the device's rows of the tier (`warehouse`).

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

`requested_at` is judged like an envelope's times (`clock_skew`): no later than the
ingest clock plus `max_clock_skew` (the setting envelopes use), and not at the edge of
the calendar (outside years 1 to 9999 once in UTC, which the warehouse could store but
not give back as a time). Any earlier time is accepted, however old: a device offline
for days sends its revocation late, and an old `requested_at` narrows nothing the
warehouse already holds (every row of the tier received before the request is deleted
whatever its window); it only decides which envelopes arriving later, spooled before
the revocation, are deleted on arrival. Refusing it would lose the user's request.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pydantic import ValidationError

from ingest._attested_keys import AttestedKeys
from ingest._errors import DeletionRejected
from ingest._verify import Rejected, check_signature, summarize_validation_error
from schemas import (
    DeletionRequestV1,
    IngestedDeletionRequest,
    RejectReason,
    SignedDeletionRequest,
    device_id_for,
    key_fingerprint,
)

__all__ = [
    "MAX_DELETION_BYTES",
    "VerifiedDeletion",
    "requested_at_problem",
    "verify_deletion_request",
]

MAX_DELETION_BYTES = 16 * 1024


@dataclass(frozen=True, slots=True)
class VerifiedDeletion:
    """An accepted deletion request, and what the audit log should say about its key."""

    item: IngestedDeletionRequest
    assurance: str
    """`software` (ed25519) or `tpm` (an attested ecdsa-p256 key)."""
    note: str | None = None
    """E.g. that the device's attestation had expired (accepted all the same)."""


def requested_at_problem(
    requested_at: datetime, received_at: datetime, max_clock_skew: timedelta
) -> str | None:
    """Why `requested_at` cannot be recorded (pure), or None: a time more than
    `max_clock_skew` after `received_at` (the device clock runs ahead), or one at the
    edge of the calendar. Earlier times are fine (see the module docstring)."""
    try:
        ahead = requested_at.astimezone(UTC) - received_at
    except OverflowError:  # e.g. 9999-12-31T23:59:59-12:00 is year 10000 in UTC
        return (
            f"requested_at {requested_at.isoformat()} is at the edge of the calendar "
            "(outside years 1 to 9999 in UTC)"
        )
    if ahead > max_clock_skew:
        return f"requested_at is {ahead.total_seconds():.0f} s ahead of the ingest clock"
    return None


def verify_deletion_request(
    body: bytes,
    *,
    region: str,
    received_at: datetime,
    max_clock_skew: timedelta = timedelta(minutes=5),
    attested_keys: AttestedKeys | None = None,
) -> VerifiedDeletion:
    """Check a request body; raises `DeletionRejected` naming the reason.

    `received_at` is the ingest clock's receipt time; a `requested_at` more than
    `max_clock_skew` after it is `clock_skew` (the setting envelopes are judged by).
    `attested_keys` is where `ecdsa-p256` keys are looked up (None: every TPM-signed
    request is `key_not_attested`). It may read the registry: call off the event loop.
    """
    try:
        signed = SignedDeletionRequest.model_validate_json(body)
    except ValidationError as exc:
        raise DeletionRejected(
            RejectReason.MALFORMED_SIGNED, summarize_validation_error(exc, "<signed request>")
        ) from exc
    # An expired attestation is accepted here (see the module docstring).
    checked = check_signature(
        signed.alg,
        signed.public_key,
        signed.payload,
        signed.signature,
        attested_keys,
        expired_by=None,
    )
    if isinstance(checked, Rejected):
        raise DeletionRejected(checked.reason, checked.detail, device_id=checked.device_id)
    attested = checked
    expected = attested.device_id if attested is not None else device_id_for(signed.public_key)
    try:
        # Strict, as envelopes are: the JSON types the published schema gives (a
        # `consent_version` of "7" or a `requested_at` of 1700000000 is refused, not coerced).
        request = DeletionRequestV1.model_validate_json(signed.payload, strict=True)
    except ValidationError as exc:
        raise DeletionRejected(
            RejectReason.SCHEMA_INVALID,
            summarize_validation_error(exc, "<request>"),
            device_id=expected,
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
    if (
        skew := requested_at_problem(request.requested_at, received_at, max_clock_skew)
    ) is not None:
        raise DeletionRejected(RejectReason.CLOCK_SKEW, skew, device_id=expected)
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
