"""Enrollment: proving the AK lives in the same TPM as the certified EK.

The ingest encrypts a random secret to the EK, bound to the AK's name
(MakeCredential, done in software). Only a TPM holding that EK's private key *and* a
loaded object with that name can recover it (ActivateCredential), so a correct answer
proves the AK resides in the certified TPM. This is the Keylime registrar's check.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from typing import Any, Final

from tpm2_pytss.constants import TPMA_OBJECT
from tpm2_pytss.utils import make_credential

from ingest.attestation._errors import AttestationError, AttestationReason
from ingest.attestation._tpm_structs import parse_public, tpm_name

__all__ = [
    "CredentialChallenge",
    "check_activation",
    "check_ak_public",
    "make_challenge",
]

_SECRET_BYTES: Final = 32
_AK_REQUIRED: Final = (
    TPMA_OBJECT.FIXEDTPM
    | TPMA_OBJECT.FIXEDPARENT
    | TPMA_OBJECT.SENSITIVEDATAORIGIN
    | TPMA_OBJECT.RESTRICTED
    | TPMA_OBJECT.SIGN_ENCRYPT
)


@dataclass(frozen=True)
class CredentialChallenge:
    """What the device's TPM must decrypt, and the answer the ingest keeps to compare."""

    credential_blob: bytes
    """TPM2B_ID_OBJECT, marshalled."""
    secret: bytes
    """TPM2B_ENCRYPTED_SECRET (the seed encrypted to the EK), marshalled."""
    expected: bytes
    """The plaintext credential; never sent, compared with the device's answer."""


def check_ak_public(ak_public: bytes, ak_name: bytes) -> Any:
    """Parse the AK public area; its name must be `ak_name` and it must be a restricted,
    TPM-generated, non-duplicable signing key (else quotes could be forged outside)."""
    public = parse_public(ak_public, "AK public")
    if tpm_name(public) != ak_name:
        raise AttestationError(
            AttestationReason.AK_NAME_MISMATCH, "the AK name is not the name of its public area"
        )
    attributes = int(public.publicArea.objectAttributes)
    if attributes & int(_AK_REQUIRED) != int(_AK_REQUIRED) or attributes & int(TPMA_OBJECT.DECRYPT):
        raise AttestationError(
            AttestationReason.AK_NOT_RESTRICTED,
            "the AK must be fixedTPM|fixedParent|sensitiveDataOrigin|restricted|sign "
            f"(attributes 0x{attributes:08x})",
        )
    return public


def make_challenge(ek_public: Any, ak_name: bytes) -> CredentialChallenge:
    """A fresh MakeCredential challenge to the parsed `ek_public`, bound to `ak_name`."""
    expected = secrets.token_bytes(_SECRET_BYTES)
    try:
        blob, seed = make_credential(ek_public, expected, ak_name)
    except ValueError as exc:
        raise AttestationError(
            AttestationReason.MALFORMED_EVIDENCE, f"cannot make a credential for this EK: {exc}"
        ) from exc
    return CredentialChallenge(
        credential_blob=bytes(blob.marshal()),
        secret=bytes(seed.marshal()),
        expected=expected,
    )


def check_activation(challenge: CredentialChallenge, proof: bytes) -> None:
    """The device's ActivateCredential answer must be the secret, compared in constant time."""
    if not hmac.compare_digest(challenge.expected, proof):
        raise AttestationError(
            AttestationReason.BAD_ACTIVATION_PROOF,
            "the activation proof is not the challenge's secret",
        )
