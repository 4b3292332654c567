"""Why an enrollment or attestation is refused: one reason code per failure.

    AttestationError(reason, detail)     an ingest `RequestRejected` (always 4xx)

`AttestationReason` values are stable wire strings: devices and auditors key on them.
"""

from __future__ import annotations

from enum import StrEnum

from ingest._errors import RequestRejected

__all__ = ["AttestationError", "AttestationReason"]


class AttestationReason(StrEnum):
    """Machine-readable reasons an enrollment or an attestation is refused."""

    # evidence that cannot be parsed at all
    MALFORMED_EVIDENCE = "malformed_evidence"
    # enrollment
    UNKNOWN_EK_ROOT = "unknown_ek_root"
    EK_CERT_MISMATCH = "ek_cert_mismatch"
    AK_NAME_MISMATCH = "ak_name_mismatch"
    AK_NOT_RESTRICTED = "ak_not_restricted"
    BAD_ACTIVATION_PROOF = "bad_activation_proof"
    # nonces
    NONCE_UNKNOWN = "nonce_unknown"
    NONCE_REUSED = "nonce_reused"
    NONCE_EXPIRED = "nonce_expired"
    NONCE_MISMATCH = "nonce_mismatch"
    # quotes and certifications
    NOT_TPM_GENERATED = "not_tpm_generated"
    WRONG_ATTEST_TYPE = "wrong_attest_type"
    QUOTE_BAD_SIGNATURE = "quote_bad_signature"
    CERTIFY_BAD_SIGNATURE = "certify_bad_signature"
    PCR_SELECTION_MISMATCH = "pcr_selection_mismatch"
    PCR_DIGEST_MISMATCH = "pcr_digest_mismatch"
    PCR_NOT_ALLOWED = "pcr_not_allowed"
    CLOCK_WENT_BACK = "clock_went_back"
    # the certified signing key
    SIGNING_KEY_MISMATCH = "signing_key_mismatch"
    SIGNING_KEY_EXPORTABLE = "signing_key_exportable"
    SIGNING_KEY_NOT_TPM_GENERATED = "signing_key_not_tpm_generated"
    SIGNING_KEY_RESTRICTED = "signing_key_restricted"
    SIGNING_KEY_WRONG_TYPE = "signing_key_wrong_type"
    # device standing in the registry
    DEVICE_UNKNOWN = "device_unknown"
    DEVICE_NOT_ENROLLED = "device_not_enrolled"
    DEVICE_REVOKED = "device_revoked"
    NO_PENDING_ENROLLMENT = "no_pending_enrollment"
    CHALLENGE_EXPIRED = "challenge_expired"
    CHALLENGE_SUPERSEDED = "challenge_superseded"
    # the operator endpoints
    OPERATOR_UNAUTHORIZED = "operator_unauthorized"


# Nonce trouble is a conflict with server state; malformed input is the client's syntax;
# everything else is a refusal to trust the evidence.
_STATUS: dict[AttestationReason, int] = {
    AttestationReason.MALFORMED_EVIDENCE: 400,
    AttestationReason.NONCE_UNKNOWN: 409,
    AttestationReason.NONCE_REUSED: 409,
    AttestationReason.NONCE_EXPIRED: 409,
    AttestationReason.DEVICE_UNKNOWN: 404,
    AttestationReason.DEVICE_NOT_ENROLLED: 409,
    AttestationReason.NO_PENDING_ENROLLMENT: 409,
    AttestationReason.CHALLENGE_EXPIRED: 409,
    AttestationReason.CHALLENGE_SUPERSEDED: 409,
    AttestationReason.OPERATOR_UNAUTHORIZED: 401,
}


class AttestationError(RequestRejected):
    """Evidence refused; `reason` says which check failed and `detail` says how."""

    def __init__(self, reason: AttestationReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason.value
        self.attestation_reason = reason
        self.detail = detail
        self.status_code = _STATUS.get(reason, 403)
