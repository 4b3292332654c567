"""Test-side TPM operations a well-behaved client never does (bad keys, PCR extends).

Each opens its own connection, so the device's `TpmKeyStore` must be closed first:
swtpm serves one connection at a time.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from tpm2_pytss import ESAPI
from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPMA_OBJECT
from tpm2_pytss.types import (
    TPM2B_PRIVATE,
    TPM2B_PUBLIC,
    TPML_DIGEST_VALUES,
    TPMT_HA,
    TPMT_PUBLIC,
    TPMT_SIG_SCHEME,
)

from client._tpm_keystore import KeyCertification, create_storage_parent


def extend_pcr(tcti: str, index: int, event: bytes) -> None:
    """Extend SHA-256 PCR `index` with the digest of `event`, as a boot stage would."""
    with ESAPI(tcti) as ectx:
        digest = TPMT_HA(hashAlg=TPM2_ALG.SHA256)
        digest.digest.sha256 = hashlib.sha256(event).digest()
        ectx.pcr_extend(ESYS_TR.PCR0 + index, TPML_DIGEST_VALUES([digest]))


def certify_foreign_key(
    tcti: str, key_dir: Path, attributes: TPMA_OBJECT, nonce: bytes
) -> tuple[bytes, bytes, KeyCertification]:
    """Create a P-256 key with `attributes` and have the device's AK certify it.

    Returns the key's uncompressed point, its marshalled TPM2B_PUBLIC and the
    certification: what a client that tried to pass off a weaker key would send.
    """
    ak_public, _ = TPM2B_PUBLIC.unmarshal((key_dir / "ak.pub").read_bytes())
    ak_private, _ = TPM2B_PRIVATE.unmarshal((key_dir / "ak.priv").read_bytes())
    with ESAPI(tcti) as ectx:
        srk = create_storage_parent(ectx)
        template = TPM2B_PUBLIC(
            publicArea=TPMT_PUBLIC.parse("ecc256:ecdsa-sha256:null", objectAttributes=attributes)
        )
        private, public, _, _, _ = ectx.create(srk, None, template)
        key = ectx.load(srk, private, public)
        ak = ectx.load(srk, ak_private, ak_public)
        ectx.flush_context(srk)
        try:
            attest, signature = ectx.certify(key, ak, nonce, TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL))
        finally:
            ectx.flush_context(key)
            ectx.flush_context(ak)
    point = b"\x04" + bytes(public.publicArea.unique.ecc.x) + bytes(public.publicArea.unique.ecc.y)
    return (
        point,
        bytes(public.marshal()),
        KeyCertification(bytes(attest), bytes(signature.marshal())),
    )
