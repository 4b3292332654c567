"""The wire format of enrollment and attestation (`/v1/enroll`, `/v1/attest`, revocation).

Binary TPM structures travel as standard base64 of their marshalled bytes
(TPM2B_PUBLIC, TPMS_ATTEST, TPMT_SIGNATURE, TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET)
and certificates as base64 DER. Pure data: building and checking them is elsewhere.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AwareDatetime, Base64Bytes, BaseModel, ConfigDict, Field

__all__ = [
    "ActivateRequest",
    "AttestRequest",
    "AttestationResult",
    "CertifyEvidence",
    "EnrollRequest",
    "EnrollmentChallenge",
    "EnrollmentResult",
    "NonceGrant",
    "NonceRequest",
    "QuoteEvidence",
    "RevocationResult",
    "RevokeRequest",
]

_DEVICE = Annotated[str, Field(pattern=r"^tpm-[0-9a-f]{32}$")]
_B64 = Annotated[Base64Bytes, Field(max_length=16 * 1024)]


class _Wire(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class EnrollRequest(_Wire):
    """Step 1: the device's EK (public area and certificate) and its AK."""

    ek_public: _B64 = Field(description="EK TPM2B_PUBLIC")
    ek_certificate: _B64 = Field(description="EK certificate, DER, as read from TPM NV")
    ak_public: _B64 = Field(description="AK TPM2B_PUBLIC")
    ak_name: _B64 | None = Field(default=None, description="AK name; computed if absent")


class EnrollmentChallenge(_Wire):
    """The MakeCredential challenge, bound to the AK name, encrypted to the EK."""

    device_id: _DEVICE
    credential_blob: _B64 = Field(description="TPM2B_ID_OBJECT")
    secret: _B64 = Field(description="TPM2B_ENCRYPTED_SECRET")
    expires_at: AwareDatetime


class ActivateRequest(_Wire):
    """Step 2: the ActivateCredential output, proving the AK lives beside the EK."""

    device_id: _DEVICE
    proof: _B64


class EnrollmentResult(_Wire):
    """The device is enrolled and may ask for attestation nonces."""

    device_id: _DEVICE
    status: Literal["enrolled"] = "enrolled"


class NonceRequest(_Wire):
    """Ask for a single-use attestation nonce."""

    device_id: _DEVICE


class NonceGrant(_Wire):
    """A single-use nonce to quote and certify over, valid until `expires_at`."""

    nonce: _B64
    expires_at: AwareDatetime
    pcr_selection: list[int] = Field(description="the SHA-256 PCRs the quote must cover")


class QuoteEvidence(_Wire):
    """A TPM2_Quote by the AK and the PCR values it covers."""

    attest: _B64 = Field(description="TPMS_ATTEST")
    signature: _B64 = Field(description="TPMT_SIGNATURE by the AK")
    pcr_values: dict[int, _B64] = Field(description="PCR index to its SHA-256 value")


class CertifyEvidence(_Wire):
    """A TPM2_Certify of the envelope signing key by the AK."""

    attest: _B64 = Field(description="TPMS_ATTEST")
    signature: _B64 = Field(description="TPMT_SIGNATURE by the AK")


class AttestRequest(_Wire):
    """Evidence over a nonce: the quote, the key's certification and the key itself."""

    device_id: _DEVICE
    nonce: _B64
    quote: QuoteEvidence
    certify: CertifyEvidence
    signing_public_area: _B64 = Field(description="the signing key's TPM2B_PUBLIC")
    signing_public_key: _B64 = Field(description="uncompressed P-256 point (65 bytes)")


class AttestationResult(_Wire):
    """The signing key is attested until `expires_at`; re-attest before then."""

    device_id: _DEVICE
    key_fingerprint: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    expires_at: AwareDatetime
    assurance: Literal["tpm"] = "tpm"


class RevokeRequest(_Wire):
    """An operator's revocation, with the reason recorded in the audit log."""

    reason: Annotated[str, Field(min_length=1, max_length=500)]


class RevocationResult(_Wire):
    """The device is revoked from the next envelope on."""

    device_id: str
    revoked: Literal[True] = True
