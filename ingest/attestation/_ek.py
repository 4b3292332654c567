"""Checking a device's EK certificate against the TPM manufacturers' roots we trust.

`cryptography.x509.verification` does the path building and signature, validity and CA
constraint checks. EK certificates are not web PKI leaf certificates (empty or
placeholder subject, a critical SAN holding a directory name with the TPM's
manufacturer/model/version, the TCG EK EKU 2.23.133.8.1, keyEncipherment only), so the
leaf is checked with `ExtensionPolicy.permit_all()` while the CAs keep the web PKI CA
defaults (basicConstraints CA, keyCertSign). That accepts swtpm's certificates and the
usual vendor (Infineon, STMicro, Nuvoton) layouts.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.verification import (
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from ingest.attestation._errors import AttestationError, AttestationReason
from ingest.attestation._tpm_structs import parse_public, public_key_of

__all__ = ["EkTrustAnchors", "verify_ek_certificate"]

_MAX_CHAIN_DEPTH = 4


@dataclass(frozen=True)
class EkTrustAnchors:
    """Root certificates we trust for EK certificates, and intermediates to build paths.

    Devices send only their EK certificate (the TPM holds no chain), so the issuing
    intermediates of each trusted manufacturer are configured here alongside the roots.
    """

    roots: tuple[x509.Certificate, ...]
    intermediates: tuple[x509.Certificate, ...] = ()

    @classmethod
    def from_pem_files(
        cls, roots: Iterable[Path | str], intermediates: Iterable[Path | str] = ()
    ) -> EkTrustAnchors:
        """Load every certificate in the given PEM files (a file may hold several)."""
        return cls(
            roots=tuple(c for p in roots for c in _load_pem(Path(p))),
            intermediates=tuple(c for p in intermediates for c in _load_pem(Path(p))),
        )


def _load_pem(path: Path) -> Sequence[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(path.read_bytes())
    except ValueError as exc:
        raise ValueError(f"{path} holds no valid PEM certificate: {exc}") from exc
    return certs


def verify_ek_certificate(
    anchors: EkTrustAnchors,
    ek_certificate: bytes,
    ek_public: bytes,
    *,
    now: dt.datetime | None = None,
) -> Any:
    """Check the EK certificate chains to a trusted root and certifies this EK.

    `ek_certificate` is DER, `ek_public` a marshalled TPM2B_PUBLIC; returns the parsed
    EK public area. Raises `unknown_ek_root` if no path to a trusted root exists (or the
    certificate is expired or not yet valid), `ek_cert_mismatch` if the certificate holds
    another key than the EK the device sent.
    """
    try:
        cert = x509.load_der_x509_certificate(ek_certificate)
    except (ValueError, x509.InvalidVersion) as exc:
        raise AttestationError(
            AttestationReason.MALFORMED_EVIDENCE, f"EK certificate is not DER X.509: {exc}"
        ) from exc
    public = parse_public(ek_public, "EK public")
    if not anchors.roots:
        raise AttestationError(AttestationReason.UNKNOWN_EK_ROOT, "no EK trust roots configured")
    builder = (
        PolicyBuilder()
        .store(Store(list(anchors.roots)))
        .max_chain_depth(_MAX_CHAIN_DEPTH)
        .extension_policies(
            ca_policy=ExtensionPolicy.webpki_defaults_ca(),
            ee_policy=ExtensionPolicy.permit_all(),
        )
    )
    if now is not None:
        builder = builder.time(now)
    try:
        builder.build_client_verifier().verify(cert, list(anchors.intermediates))
    except (VerificationError, ValueError) as exc:  # ValueError: a field that does not parse
        raise AttestationError(
            AttestationReason.UNKNOWN_EK_ROOT,
            f"EK certificate (issuer {_issuer(cert)}) does not chain to a trusted root: {exc}",
        ) from exc
    try:
        certified = cert.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:  # a key type or curve it cannot load
        raise AttestationError(
            AttestationReason.MALFORMED_EVIDENCE, f"EK certificate key cannot be read: {exc}"
        ) from exc
    if not _same_public_key(certified, public_key_of(public)):
        raise AttestationError(
            AttestationReason.EK_CERT_MISMATCH, "the EK certificate holds another key"
        )
    return public


def _issuer(cert: x509.Certificate) -> str:
    # `cryptography` parses fields when they are read: a mangled issuer raises here.
    try:
        return cert.issuer.rfc4514_string()
    except ValueError:
        return "unreadable"


def _same_public_key(a: object, b: object) -> bool:
    if isinstance(a, rsa.RSAPublicKey) and isinstance(b, rsa.RSAPublicKey):
        return a.public_numbers() == b.public_numbers()
    if isinstance(a, ec.EllipticCurvePublicKey) and isinstance(b, ec.EllipticCurvePublicKey):
        return a.public_numbers() == b.public_numbers()
    return False
