"""Enrollment, attestation and revocation: the registry, the nonces, the audit log.

`AttestationService` strings the pure checks of `ingest.attestation` together with
durable state. Every decision, accepted or refused, is recorded in the audit log
before the caller answers; a refusal is raised as `AttestationError` (a 4xx).

    enroll(EnrollRequest) -> EnrollmentChallenge          (MakeCredential to the EK)
    activate(ActivateRequest) -> EnrollmentResult         (ActivateCredential proof)
    issue_nonce(NonceRequest) -> NonceGrant
    attest(AttestRequest) -> AttestationResult            (quote + certify)
    revoke(device_id, reason) -> RevocationResult         (operator)

Nothing about a device changes before its TPM has proven it holds the EK: `enroll`
only issues a pending challenge (an enrolled device keeps its AK, signing key and
standing), and `activate` registers the new AK as a compare-and-swap on the challenge
whose answer it checked (`DeviceRegistry.activate`). The decisions of requests that
prove nothing yet (issuing a challenge or a nonce, and every refusal) go through
`SampledAudit`, keyed by the caller's `source`; activations, attestations and
revocations, which change state, are appended one by one.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from auditlog import AuditLog, AuditRecord
from ingest._attested_keys import AttestedKeys
from ingest._audit_sampling import SampledAudit
from ingest._registry import DeviceRecord, DeviceRegistry, PendingEnrollment
from ingest.attestation import (
    AttestationError,
    AttestationReason,
    CredentialChallenge,
    EkTrustAnchors,
    NonceStore,
    PcrPolicy,
    TpmClock,
    check_activation,
    check_ak_public,
    make_challenge,
    verify_ek_certificate,
    verify_key_certification,
    verify_quote,
)
from ingest.attestation._tpm_structs import parse_public, tpm_name
from policies import AttestationPolicy
from schemas import (
    ActivateRequest,
    AttestationResult,
    AttestRequest,
    EnrollmentChallenge,
    EnrollmentResult,
    EnrollRequest,
    NonceGrant,
    NonceRequest,
    RevocationResult,
    key_fingerprint,
    tpm_device_id_for,
)

__all__ = ["AttestationService", "ek_device_id"]


def ek_device_id(ek_certificate: bytes) -> str | None:
    """The device id named by an EK certificate (DER), or None if it does not parse."""
    try:
        cert = x509.load_der_x509_certificate(ek_certificate)
        spki = cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    except (ValueError, TypeError, UnsupportedAlgorithm, x509.InvalidVersion):
        return None
    return tpm_device_id_for(spki)


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _b64(data: bytes) -> bytes:
    # pydantic's Base64Bytes decodes its input: hand it base64 (see client._sealing).
    return base64.b64encode(data)


class AttestationService:
    """The ingest side of the Keylime-style registrar and verifier. Thread-safe."""

    def __init__(
        self,
        policy: AttestationPolicy,
        registry: DeviceRegistry,
        audit: AuditLog,
        keys: AttestedKeys,
        *,
        sampled: SampledAudit | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.policy = policy
        self.registry = registry
        self.audit = audit
        self.sampled = sampled if sampled is not None else SampledAudit(audit, clock=clock)
        self.keys = keys
        self._clock = clock
        self._anchors = EkTrustAnchors(policy.roots, policy.intermediates)
        self._pcr_policy = PcrPolicy(policy.pcr_selection, policy.allowed_pcr_values())
        # Unix time, not monotonic: the grant tells the device when its nonce expires.
        self._nonces = NonceStore(policy.nonce_lifetime, clock=clock)

    # --- enrollment -------------------------------------------------------------------

    def enroll(self, request: EnrollRequest, *, source: str) -> EnrollmentChallenge:
        """Check the EK certificate and the AK, and issue a credential challenge.

        Only the pending challenge is stored: the device's registration, if any, stays
        as it is until `activate` receives the TPM's answer."""
        device_id = ek_device_id(request.ek_certificate)
        with self._audited("enroll", device_id, source=source, sampled=True):
            ek = verify_ek_certificate(self._anchors, request.ek_certificate, request.ek_public)
            assert device_id is not None  # the certificate parsed to be verified
            self._refuse_revoked(device_id)
            ak_name = request.ak_name
            if ak_name is None:
                ak_name = tpm_name(parse_public(request.ak_public, "AK public"))
            check_ak_public(request.ak_public, ak_name)
            challenge = make_challenge(ek, ak_name)
            now = self._clock()
            expires_at = now + self.policy.challenge_lifetime
            self.registry.offer_challenge(
                PendingEnrollment(
                    device_id=device_id,
                    ek_fingerprint=key_fingerprint(request.ek_certificate),
                    ek_public=request.ek_public,
                    ak_public=request.ak_public,
                    ak_name=ak_name,
                    challenge=challenge.expected,
                    expires_at=expires_at,
                ),
                now=now,
            )
        return EnrollmentChallenge(
            device_id=device_id,
            credential_blob=_b64(challenge.credential_blob),
            secret=_b64(challenge.secret),
            expires_at=_utc(expires_at),
        )

    def activate(self, request: ActivateRequest, *, source: str) -> EnrollmentResult:
        """Accept the ActivateCredential proof: the pending AK becomes the device's."""
        device_id = request.device_id
        with self._audited("activate", device_id, source=source):
            pending = self.registry.pending(device_id)
            if pending is None:
                raise AttestationError(
                    AttestationReason.NO_PENDING_ENROLLMENT,
                    "no enrollment challenge is pending for this device; enroll first",
                )
            if self._clock() >= pending.expires_at:
                raise AttestationError(
                    AttestationReason.CHALLENGE_EXPIRED, "the challenge expired; enroll again"
                )
            check_activation(CredentialChallenge(b"", b"", pending.challenge), request.proof)
            self._refuse_revoked(device_id)
            before = self.registry.get(device_id)
            if not self.registry.activate(
                device_id, challenge=pending.challenge, now=self._clock()
            ):
                raise AttestationError(
                    AttestationReason.CHALLENGE_SUPERSEDED,
                    "a newer enrollment replaced (or this proof already answered) the "
                    "challenge this proof answers; enroll again",
                )
            if before is not None:
                self.keys.invalidate(before.signing_key_fp)
        return EnrollmentResult(device_id=device_id)

    # --- attestation ------------------------------------------------------------------

    def issue_nonce(self, request: NonceRequest, *, source: str) -> NonceGrant:
        """A single-use nonce for an enrolled, non-revoked device."""
        with self._audited("nonce", request.device_id, source=source, sampled=True):
            self._enrolled(request.device_id)
            nonce = self._nonces.issue(request.device_id)
        return NonceGrant(
            nonce=_b64(nonce),
            expires_at=_utc(self._clock() + self.policy.nonce_lifetime),
            pcr_selection=list(self.policy.pcr_selection),
        )

    def attest(self, request: AttestRequest, *, source: str) -> AttestationResult:
        """Verify the quote and the signing key's certification; attest the key."""
        device_id = request.device_id
        with self._audited("attest", device_id, source=source):
            record = self._enrolled(device_id)
            self._nonces.consume(device_id, request.nonce)
            last = None
            if record.tpm_reset_count is not None:
                last = TpmClock(
                    record.tpm_reset_count, record.tpm_restart_count or 0, record.tpm_clock or 0
                )
            quote = request.quote
            clock = verify_quote(
                record.ak_public,
                quote.attest,
                quote.signature,
                quote.pcr_values,
                nonce=request.nonce,
                policy=self._pcr_policy,
                last_clock=last,
            )
            verify_key_certification(
                record.ak_public,
                request.certify.attest,
                request.certify.signature,
                nonce=request.nonce,
                signing_public_area=request.signing_public_area,
                presented_key=request.signing_public_key,
            )
            now = self._clock()
            expires_at = now + self.policy.attestation_lifetime
            fingerprint = key_fingerprint(request.signing_public_key)
            self.registry.record_attestation(
                device_id,
                signing_key=request.signing_public_key,
                signing_key_fp=fingerprint,
                now=now,
                expires_at=expires_at,
                reset_count=clock.reset_count,
                restart_count=clock.restart_count,
                clock=clock.clock,
            )
            self.keys.invalidate(fingerprint, record.signing_key_fp)
        return AttestationResult(
            device_id=device_id, key_fingerprint=fingerprint, expires_at=_utc(expires_at)
        )

    # --- operator ---------------------------------------------------------------------

    def revoke(self, device_id: str, reason: str) -> RevocationResult:
        """Revoke a device: its next envelope, nonce or enrollment is refused."""
        with self._audited("revoke", device_id, source=None, detail=reason):
            record = self._device(device_id)
            self.registry.revoke(device_id, reason=reason, now=self._clock())
            self.keys.invalidate(record.signing_key_fp)
        return RevocationResult(device_id=device_id)

    def audit_refusal(
        self, action: str, device_id: str | None, reason: str, *, source: str
    ) -> None:
        """Record a refusal decided outside the service (operator authentication, rate
        limits), sampled per source like every unauthenticated refusal."""
        self.sampled.append(source, AuditRecord(action, "rejected", device_id, reason, None))

    # --- internals --------------------------------------------------------------------

    def _device(self, device_id: str) -> DeviceRecord:
        record = self.registry.get(device_id)
        if record is None:
            raise AttestationError(
                AttestationReason.DEVICE_UNKNOWN, f"device {device_id} never enrolled"
            )
        return record

    def _enrolled(self, device_id: str) -> DeviceRecord:
        record = self.registry.get(device_id)
        if record is None and self.registry.pending(device_id) is not None:
            raise AttestationError(
                AttestationReason.DEVICE_NOT_ENROLLED,
                f"device {device_id} has a challenge pending: answer it (activate)",
            )
        record = record or self._device(device_id)
        if record.revoked:
            raise AttestationError(
                AttestationReason.DEVICE_REVOKED, f"device {device_id} is revoked"
            )
        if record.status != "enrolled":
            raise AttestationError(
                AttestationReason.DEVICE_NOT_ENROLLED,
                f"device {device_id} has not completed enrollment (activate)",
            )
        return record

    def _refuse_revoked(self, device_id: str) -> None:
        existing = self.registry.get(device_id)
        if existing is not None and existing.revoked:
            raise AttestationError(
                AttestationReason.DEVICE_REVOKED, f"device {device_id} is revoked"
            )

    @contextmanager
    def _audited(
        self,
        action: str,
        device_id: str | None,
        *,
        source: str | None,
        sampled: bool = False,
        detail: str | None = None,
    ) -> Iterator[None]:
        """Record the decision: accepted if the block returns, rejected with the reason
        if it raises `AttestationError` (re-raised after the entry is durable).

        A refusal with a `source` (an unauthenticated caller), and an acceptance marked
        `sampled` (it changed no device state), go through `SampledAudit`."""
        try:
            yield
        except AttestationError as exc:
            refused = AuditRecord(action, "rejected", device_id, exc.reason, str(exc.detail))
            if source is None:
                self.audit.append(refused)
            else:
                self.sampled.append(source, refused)
            raise
        accepted = AuditRecord(action, "accepted", device_id, None, detail)
        if sampled and source is not None:
            self.sampled.append(source, accepted)
        else:
            self.audit.append(accepted)
