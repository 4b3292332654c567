"""Verifying a TPM2_Certify of the envelope signing key by the attested AK.

The checks are go-attestation's for an application key: the AK vouches that an object
with this name is loaded in its TPM, and the name is a hash of the public area, whose
attributes say the key was generated inside the TPM (sensitiveDataOrigin), can never
leave it (fixedTPM, fixedParent) and is not restricted (a restricted key could sign
only TPM-made structures, which would not be an envelope key).
"""

from __future__ import annotations

from typing import Final

from tpm2_pytss.constants import TPM2_ST, TPMA_OBJECT

from ingest.attestation._errors import AttestationError, AttestationReason
from ingest.attestation._tpm_structs import (
    check_attest_header,
    ecc_p256_point,
    parse_attest,
    parse_public,
    tpm_name,
    verify_tpm_signature,
)

__all__ = ["verify_key_certification"]

_NON_EXPORTABLE: Final = int(TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT)


def verify_key_certification(
    ak_public: bytes,
    attest: bytes,
    signature: bytes,
    *,
    nonce: bytes,
    signing_public_area: bytes,
    presented_key: bytes,
) -> None:
    """Accept `presented_key` (uncompressed P-256 point) as a TPM-resident signing key.

    `signing_public_area` is the key's marshalled TPM2B_PUBLIC and `attest`/`signature`
    its certification by the AK over `nonce` (already consumed by the caller).
    """
    ak = parse_public(ak_public, "AK public")
    verify_tpm_signature(ak, attest, signature, AttestationReason.CERTIFY_BAD_SIGNATURE)
    parsed = parse_attest(attest)
    check_attest_header(parsed, int(TPM2_ST.ATTEST_CERTIFY))
    if bytes(parsed.extraData) != nonce:
        raise AttestationError(
            AttestationReason.NONCE_MISMATCH, "the certification is over another nonce"
        )
    public = parse_public(signing_public_area, "signing key public")
    if bytes(parsed.attested.certify.name) != tpm_name(public):
        raise AttestationError(
            AttestationReason.SIGNING_KEY_MISMATCH,
            "the AK certified another object than this public area",
        )
    point = ecc_p256_point(public)
    if point is None:
        raise AttestationError(
            AttestationReason.SIGNING_KEY_WRONG_TYPE, "the signing key is not ECC P-256"
        )
    if point != presented_key:
        raise AttestationError(
            AttestationReason.SIGNING_KEY_MISMATCH,
            "the certified key is not the key the device presents",
        )
    attributes = int(public.publicArea.objectAttributes)
    if attributes & _NON_EXPORTABLE != _NON_EXPORTABLE:
        raise AttestationError(
            AttestationReason.SIGNING_KEY_EXPORTABLE,
            f"the signing key is not fixedTPM|fixedParent (attributes 0x{attributes:08x})",
        )
    if not attributes & int(TPMA_OBJECT.SENSITIVEDATAORIGIN):
        raise AttestationError(
            AttestationReason.SIGNING_KEY_NOT_TPM_GENERATED,
            "the signing key was imported, not generated in the TPM",
        )
    if attributes & int(TPMA_OBJECT.RESTRICTED):
        raise AttestationError(
            AttestationReason.SIGNING_KEY_RESTRICTED, "the signing key is restricted"
        )
    if not attributes & int(TPMA_OBJECT.SIGN_ENCRYPT):
        raise AttestationError(
            AttestationReason.SIGNING_KEY_WRONG_TYPE, "the signing key cannot sign"
        )
