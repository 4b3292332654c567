"""Envelope verification: the per-item hot path, pure logic with no I/O.

`EnvelopeVerifier.verify` runs the checks in one readable order, cheapest and least
trusting first: size, base64, unseal, signed-envelope shape, the key's standing (an
`ecdsa-p256` key must be currently attested by a non-revoked TPM device), the signature
over the exact payload bytes, envelope schema, device id bound to the key, software
assurance allowed for every tier in the envelope, known policy, consent covering every
tier it carries, clock skew, region, the window's age (no older than its tiers'
retention), the window (exactly one aligned policy window), the local releases and the
Prio3 reports' tasks, tiers, sizes and batch. Nothing from the payload
is parsed before its signature has been checked. What depends on the device's history
(sequence order, one envelope per window, the daily epsilon budget) is decided after
this, by `ingest._device_ledger`.

`RecentlyAccepted` is the per-replica duplicate fast path (see its docstring).
"""

from __future__ import annotations

import base64
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal
from uuid import UUID

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from nacl.exceptions import BadSignatureError, CryptoError
from nacl.public import PrivateKey, SealedBox
from nacl.signing import VerifyKey
from pydantic import BaseModel, ConfigDict, ValidationError

from ingest._attested_keys import AttestedKey, AttestedKeys
from ingest._consent import consent_problem
from ingest._report_rules import ReportProblem, ReportRules
from ingest._retention_rules import RetentionRules
from schemas import (
    MAX_SEALED_BYTES,
    EnvelopeV1,
    IngestedEnvelope,
    RejectReason,
    key_fingerprint,
)

__all__ = [
    "MAX_DETAIL_CHARS",
    "Accepted",
    "EnvelopeVerifier",
    "RecentlyAccepted",
    "Rejected",
    "Verdict",
    "bounded_detail",
    "check_signature",
    "ingested_json",
    "loc_text",
    "summarize_validation_error",
]

_ED25519_KEY_BYTES = 32
_ED25519_SIG_BYTES = 64
_P256_POINT_BYTES = 65
_P256_MAX_DER_SIG_BYTES = 72
_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())
_MAX_ERRORS_SHOWN = 3
_MAX_LOC_PART_CHARS = 40
MAX_DETAIL_CHARS = 400
"""The longest refusal detail the ingest answers or audits."""
_SOFTWARE_DEVICE_PREFIX = "dev-"  # as `schemas.device_id_for`: "dev-" + 32 hex digits


class _SignedEnvelopeIn(BaseModel):
    """`SignedEnvelope` as the ingest reads it: the same fields, with the base64 of its
    three byte fields decoded by pydantic-core while it parses (`val_json_bytes`), not by
    a Python validator per field: about 5 µs less per envelope. It also accepts the
    URL-safe alphabet and missing padding (the same bytes either way), and refuses
    whitespace and other characters outside the alphabet (the shared model's decoder
    drops those). The signature is checked over the decoded payload either way.
    `test_verify.py` pins that the two read the same fields and bytes.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", val_json_bytes="base64")

    v: Literal[1] = 1
    alg: Literal["ed25519", "ecdsa-p256"] = "ed25519"
    public_key: bytes
    payload: bytes
    signature: bytes


@dataclass(frozen=True, slots=True)
class Accepted:
    """A verified envelope, ready for the bus."""

    item: IngestedEnvelope
    encoded: bytes
    """`item`'s bus message: its JSON, around the device's own signed envelope bytes."""

    @property
    def envelope_id(self) -> UUID:
        """The verified envelope's id."""
        return self.item.envelope.envelope_id


@dataclass(frozen=True, slots=True)
class Rejected:
    """An item refused with a stable reason and a human detail (never echoing content)."""

    reason: RejectReason
    detail: str
    envelope_id: UUID | None = None
    device_id: str | None = None
    """Known when the key names its device (an attested TPM key): for the audit log."""


Verdict = Accepted | Rejected


def loc_text(part: str | int) -> str:
    """One step of an error's location. A key can be the sender's own text (an extra
    key, a label name): at most `_MAX_LOC_PART_CHARS` of it, printable characters only,
    so a detail never carries an item's bulk into the answer or the audit log."""
    text = str(part)
    if len(text) > _MAX_LOC_PART_CHARS:
        text = text[:_MAX_LOC_PART_CHARS] + "…"
    return text if text.isprintable() else repr(text)[1:-1][: _MAX_LOC_PART_CHARS + 1]


def summarize_validation_error(exc: ValidationError, what: str = "<envelope>") -> str:
    """A short, content-free summary of a pydantic error: where and why, not the input.
    `what` names the whole document when the error is at its top level. At most
    `MAX_DETAIL_CHARS` characters."""
    errors = exc.errors(include_url=False, include_input=False)
    parts = [
        f"{'.'.join(loc_text(p) for p in e['loc']) or what}: {e['msg']}"
        for e in errors[:_MAX_ERRORS_SHOWN]
    ]
    more = len(errors) - _MAX_ERRORS_SHOWN
    return bounded_detail("; ".join(parts) + (f" (+{more} more)" if more > 0 else ""))


def bounded_detail(detail: str) -> str:
    """`detail` cut to `MAX_DETAIL_CHARS` characters (a refusal's human text)."""
    if len(detail) <= MAX_DETAIL_CHARS:
        return detail
    return detail[: MAX_DETAIL_CHARS - 1] + "…"


class EnvelopeVerifier:
    """Verifies sealed, signed envelopes for one region. Thread-safe; its only state is
    the text of the last receipt time it stamped (a request's items share one)."""

    __slots__ = (
        "_attested",
        "_box",
        "_known_policies",
        "_max_b64",
        "_max_sealed",
        "_region",
        "_reports",
        "_retention",
        "_skew",
        "_software_tiers",
        "_stamp",
    )

    def __init__(
        self,
        private_key: PrivateKey,
        *,
        region: str,
        known_policy_hashes: Iterable[str],
        max_sealed_bytes: int = MAX_SEALED_BYTES,
        attested_keys: AttestedKeys | None = None,
        software_tiers: Iterable[str] | None = None,
        max_clock_skew: timedelta = timedelta(minutes=5),
        report_rules: ReportRules | None = None,
        retention: RetentionRules | None = None,
    ) -> None:
        """`attested_keys`: where TPM keys are looked up (None: every `ecdsa-p256`
        envelope is `key_not_attested`). `software_tiers`: the tiers an Ed25519
        (software) key may send (None: all). `report_rules`: the policies whose Prio3
        reports this ingest checks (None: an envelope with reports is `unknown_task`).
        `retention`: how old a window may be when it arrives (None: any age)."""
        self._reports = report_rules or ReportRules(())
        self._retention = retention
        self._attested = attested_keys
        self._skew = max_clock_skew
        self._software_tiers = None if software_tiers is None else frozenset(software_tiers)
        self._box = SealedBox(private_key)
        self._region = region
        self._known_policies = frozenset(known_policy_hashes)
        self._max_sealed = max_sealed_bytes
        # Refuse by the encoded length before decoding anything: 4 chars per 3 bytes.
        self._max_b64 = 4 * ((max_sealed_bytes + 2) // 3)
        self._stamp: tuple[datetime, bytes] | None = None
        """(receipt time, its ISO text): every item of a request has the same one."""

    def _clock_problem(self, env: EnvelopeV1, received_at: datetime) -> str | None:
        """A device clock running ahead: data would land in windows that have not
        happened yet. (Sequence order and overlapping windows are the device ledger's
        to judge: `ingest._admission`.)"""
        horizon = received_at + self._skew
        if env.window_end > horizon:
            ahead = (env.window_end - received_at).total_seconds()
            return f"window_end is {ahead:.0f} s ahead of the ingest clock"
        if env.sent_at > horizon:
            ahead = (env.sent_at - received_at).total_seconds()
            return f"sent_at is {ahead:.0f} s ahead of the ingest clock"
        if env.sent_at < env.window_end - self._skew:
            return "sent_at is before the window it reports on ended"
        return None

    def verify(self, item: str, *, received_at: datetime) -> Verdict:
        """Check one base64 item; `received_at` is stamped on an accepted envelope."""
        if len(item) > self._max_b64:
            return Rejected(
                RejectReason.ITEM_TOO_LARGE,
                f"item is {len(item)} base64 characters; the limit is {self._max_b64}",
            )
        try:
            sealed = base64.b64decode(item, validate=True)
        except ValueError:  # binascii.Error, or non-ASCII characters
            return Rejected(RejectReason.NOT_BASE64, "item is not standard base64")
        if len(sealed) > self._max_sealed:
            return Rejected(
                RejectReason.ITEM_TOO_LARGE,
                f"sealed item is {len(sealed)} bytes; the limit is {self._max_sealed}",
            )
        try:
            plain = self._box.decrypt(sealed)
        except CryptoError:
            return Rejected(
                RejectReason.UNSEAL_FAILED,
                f"cannot unseal: not sealed to the current ingest key of region {self._region!r}",
            )
        try:
            signed = _SignedEnvelopeIn.model_validate_json(plain)
        except ValidationError as exc:
            return Rejected(RejectReason.MALFORMED_SIGNED, summarize_validation_error(exc))
        attested = check_signature(
            signed.alg,
            signed.public_key,
            signed.payload,
            signed.signature,
            self._attested,
            expired_by=received_at.timestamp(),
        )
        if isinstance(attested, Rejected):
            return attested
        try:
            # Strict: the JSON types the published schema gives (a sequence 1.0, "7" or
            # true is refused, not coerced), so the ingest accepts what the schema says.
            env = EnvelopeV1.model_validate_json(signed.payload, strict=True)
        except ValidationError as exc:
            return Rejected(RejectReason.SCHEMA_INVALID, summarize_validation_error(exc))
        fingerprint = key_fingerprint(signed.public_key)
        expected_device = (
            attested.device_id
            if attested is not None
            else _SOFTWARE_DEVICE_PREFIX + fingerprint[:32]
        )
        if env.device_id != expected_device:
            return Rejected(
                RejectReason.DEVICE_KEY_MISMATCH,
                f"device_id {env.device_id!r} is not the id of the signing key "
                f"({expected_device!r})",
                env.envelope_id,
            )
        if attested is None and self._software_tiers is not None:
            carried = {a.tier.value for a in env.aggregates} | {r.tier.value for r in env.reports}
            refused = sorted(carried - self._software_tiers)
            if refused:
                return Rejected(
                    RejectReason.SOFTWARE_KEY_REFUSED,
                    f"policy requires an attested TPM key for tier(s) {refused}; "
                    "this envelope is signed by a software key",
                    env.envelope_id,
                    env.device_id,
                )
        if env.policy_hash not in self._known_policies:
            return Rejected(
                RejectReason.UNKNOWN_POLICY,
                f"policy {env.policy_hash[:12]}… is not one this ingest accepts",
                env.envelope_id,
            )
        if (missing := consent_problem(env)) is not None:
            return Rejected(RejectReason.CONSENT_MISSING, missing, env.envelope_id, env.device_id)
        try:
            skew = self._clock_problem(env, received_at)
        except OverflowError:  # a time at the very edge of the calendar (year 1 or 9999)
            skew = "window or send time at the edge of the calendar"
        if skew is not None:
            return Rejected(RejectReason.CLOCK_SKEW, skew, env.envelope_id, env.device_id)
        if env.region != self._region:
            return Rejected(
                RejectReason.WRONG_REGION,
                f"envelope is for region {env.region!r}; this ingest serves {self._region!r}",
                env.envelope_id,
            )
        retention = self._retention
        if retention is not None and (expired := retention.problem(env, received_at)):
            return Rejected(RejectReason.WINDOW_EXPIRED, expired, env.envelope_id, env.device_id)
        batch = self._reports.check(env)
        if isinstance(batch, ReportProblem):
            return Rejected(batch.reason, batch.detail, env.envelope_id, env.device_id)
        # Built from checked parts (the envelope validated above, the ingest's own clock
        # and hash): validating them again cost about a tenth of this function.
        assurance: Literal["software", "tpm"] = "software" if attested is None else "tpm"
        stamp = self._stamp  # read once: another thread may replace it meanwhile
        if stamp is None or stamp[0] is not received_at:
            stamp = self._stamp = (received_at, received_at.isoformat().encode())
        return Accepted(
            IngestedEnvelope.model_construct(
                envelope=env,
                received_at=received_at,
                key_fingerprint=fingerprint,
                assurance=assurance,
                batch_start=batch,
            ),
            _ingested_json(signed.payload, stamp[1], fingerprint, assurance, batch),
        )


def ingested_json(
    payload: bytes,
    received_at: datetime,
    fingerprint: str,
    assurance: Literal["software", "tpm"],
    batch_start: datetime | None,
) -> bytes:
    """The `IngestedEnvelope` JSON of an envelope verified from `payload`, built around
    `payload` itself instead of serializing the parsed model again (about 10 µs less per
    envelope). `payload` parsed as `EnvelopeV1`, so it is one JSON object, at most with
    whitespace around it (pydantic refuses anything else at the top level, a BOM
    included), and it parses the same inside the wrapper: the sink reads back exactly
    the envelope that was checked, from the bytes the device signed. The other fields
    are the ingest's own (a UTC time, a hex digest, a literal)."""
    return _ingested_json(
        payload, received_at.isoformat().encode(), fingerprint, assurance, batch_start
    )


def _ingested_json(
    payload: bytes,
    received_text: bytes,
    fingerprint: str,
    assurance: Literal["software", "tpm"],
    batch_start: datetime | None,
) -> bytes:
    """`ingested_json` with the receipt time's ISO text given."""
    batch = b"null" if batch_start is None else b'"' + batch_start.isoformat().encode() + b'"'
    return b"".join(
        (
            b'{"envelope":',
            payload,
            b',"received_at":"',
            received_text,
            b'","key_fingerprint":"',
            fingerprint.encode(),
            b'","assurance":"',
            assurance.encode(),
            b'","batch_start":',
            batch,
            b"}",
        )
    )


def check_signature(
    alg: str,
    public_key: bytes,
    payload: bytes,
    signature: bytes,
    attested_keys: AttestedKeys | None,
    *,
    expired_by: float | None,
) -> AttestedKey | Rejected | None:
    """Check a signature over `payload`, the key's standing first (cheap, then crypto).

    None: a valid `ed25519` (software) signature. An `AttestedKey`: a valid `ecdsa-p256`
    signature by the currently attested key of a device that is not revoked (and whose
    attestation had not expired by `expired_by`, Unix seconds; None accepts an expired
    one). Otherwise the `Rejected` naming why. Envelopes and deletion requests share it.
    """
    if alg == "ecdsa-p256":
        return _check_tpm_signed(public_key, payload, signature, attested_keys, expired_by)
    if len(public_key) != _ED25519_KEY_BYTES:
        return Rejected(
            RejectReason.MALFORMED_SIGNED,
            f"public_key must be {_ED25519_KEY_BYTES} bytes, got {len(public_key)}",
        )
    if len(signature) != _ED25519_SIG_BYTES:
        return Rejected(
            RejectReason.MALFORMED_SIGNED,
            f"signature must be {_ED25519_SIG_BYTES} bytes, got {len(signature)}",
        )
    try:
        VerifyKey(public_key).verify(payload, signature)
    except BadSignatureError:
        return Rejected(
            RejectReason.BAD_SIGNATURE, "the signature does not match the payload and key"
        )
    return None


def _check_tpm_signed(
    key_bytes: bytes,
    payload: bytes,
    signature: bytes,
    attested_keys: AttestedKeys | None,
    expired_by: float | None,
) -> AttestedKey | Rejected:
    """The key's standing first (a dict lookup), then the ECDSA signature."""
    if len(key_bytes) != _P256_POINT_BYTES or key_bytes[0] != 0x04:
        return Rejected(
            RejectReason.MALFORMED_SIGNED,
            f"an ecdsa-p256 public_key is a {_P256_POINT_BYTES}-byte uncompressed point",
        )
    if len(signature) > _P256_MAX_DER_SIG_BYTES:
        return Rejected(
            RejectReason.MALFORMED_SIGNED,
            f"an ecdsa-p256 signature is DER of at most {_P256_MAX_DER_SIG_BYTES} bytes",
        )
    key = attested_keys.lookup(key_bytes) if attested_keys is not None else None
    if key is None:
        return Rejected(
            RejectReason.KEY_NOT_ATTESTED,
            "this TPM key is not the currently attested signing key of any device",
        )
    if key.revoked:
        return Rejected(
            RejectReason.DEVICE_REVOKED,
            f"device {key.device_id} is revoked",
            device_id=key.device_id,
        )
    if expired_by is not None and expired_by >= key.expires_at:
        return Rejected(
            RejectReason.ATTESTATION_EXPIRED,
            f"device {key.device_id}'s attestation expired; it must re-attest",
            device_id=key.device_id,
        )
    try:
        key.public_key.verify(signature, payload, _ECDSA_SHA256)
    except InvalidSignature:
        return Rejected(
            RejectReason.BAD_SIGNATURE,
            "the signature does not match the payload and key",
            device_id=key.device_id,
        )
    return key


class RecentlyAccepted:
    """Bounded LRU of (device id, envelope id) this replica recently made durable.

    A fast path only: a client retrying after a lost 202 would otherwise re-publish
    envelopes the bus already holds. A hit is answered as *accepted* (with reason
    `duplicate` as information), not as an error: the envelope is durable, and the sink
    is idempotent on envelope id, so exact replay protection does not depend on this
    cache (another replica, or an evicted id, simply re-publishes and the sink skips it).
    Ids enter only after the bus acknowledged, so a failed publish never turns a retry
    into a false "already accepted". Used from the event loop only: no lock.

    Kept as (device id, the id's 128-bit integer), not as `UUID` objects: a `UUID` is an
    object the garbage collector tracks, and a full cache (65,536 of them, added one per
    accepted envelope and kept for good) is that many objects for every pass of the
    older generations to walk. Strings, integers and tuples of them are not tracked.
    (On the benchmark, whose cache holds a few thousand ids, the change alone is within
    the noise of the collector's time.)
    """

    __slots__ = ("_ids", "_max")

    def __init__(self, max_size: int) -> None:
        self._ids: OrderedDict[tuple[str, int], None] = OrderedDict()
        self._max = max_size

    def __contains__(self, key: object) -> bool:
        """Whether `key`, a (device id, envelope id) pair, was recently accepted."""
        if not isinstance(key, tuple) or len(key) != 2 or not isinstance(key[1], UUID):
            return False
        return (key[0], key[1].int) in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add_all(self, envelope_ids: Iterable[tuple[str, UUID]]) -> None:
        """Remember (device id, envelope id) pairs the bus acknowledged, evicting the
        least recently added."""
        if self._max == 0:
            return
        ids = self._ids
        for device_id, envelope_id in envelope_ids:
            key = (device_id, envelope_id.int)
            ids[key] = None
            ids.move_to_end(key)
        while len(ids) > self._max:
            ids.popitem(last=False)
