"""Valid TPM evidence made in software, for property tests to mutate: an EK (RSA 2048
and ECC P-256) with its certificate under a test root, an AK shaped as a TPM makes one,
a quote and a certification by that AK, and the certified signing key.

Every byte is the same on every run (fixed keys, serials and times, deterministic ECDSA
as RFC 6979 makes it), so a derandomized property test mutates the same evidence each
time and its cases are reproducible."""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID
from tpm2_pytss.constants import TPM2_ALG, TPM2_ST, TPMA_OBJECT
from tpm2_pytss.types import (
    TPM2B_PUBLIC,
    TPML_PCR_SELECTION,
    TPMS_ATTEST,
    TPMS_CERTIFY_INFO,
    TPMS_CLOCK_INFO,
    TPMS_QUOTE_INFO,
    TPMT_SIGNATURE,
    TPMU_ATTEST,
)

from ingest.attestation import EkTrustAnchors, PcrPolicy

__all__ = ["NONCE", "PCRS", "POLICY", "Evidence", "make_evidence", "sign_as_ak"]

NONCE = b"n" * 32
PCRS = {0: bytes(32), 7: b"\x07" * 32}
POLICY = PcrPolicy(selection=(0, 7), allowed={0: frozenset({bytes(32)})})
NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
_ECDSA = ec.ECDSA(hashes.SHA256(), deterministic_signing=True)

# A fixed RSA EK (a test key, nothing else): RSA keys cannot be derived from a seed.
_RSA_EK = """\
-----BEGIN PRIVATE KEY-----
MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQDJ/KMAbKLm4Ty/
gRgl9MZff9wjeV+s1I9JGIzf2Lps+gvzsD2kyXqu7LrWrYerJa9U4PNpBHtk3Lov
8GDh6O4MUHMpf4iC8lMJ42py0IuHvDB+lYDmF3JJypyKa6zOmBsRAQPqrPyzEfGZ
+hAKsmQ+ofopEyQGV1rla/rTemf++5Oz/0KP9ERkB+WJ9eGyAQti4RsCigNp9J88
yJkFH4TUWQ7sF7O+s8D9h9KLiIbmuMtjVAl0L4MkcZgFn4tbsz8NkM5FO4nsXfWB
QKLHL6CMYkl1KYWyiHSEF+hP2bMi4Yt/7thWv6SwsPHQnNgsBJEthw4o5zfEO0j+
RDZRIIvTAgMBAAECggEABVG9pHY38jhs1k9X7nXH3LVAe+KtNs20yKobfF8a3WHW
ko7J5p75iVE7OJW8x42z4BSirpPIdTWhFCjYVzq0sLhUkYcdR62KNtaK0NfKZ87J
7w/WgIow/Jf1Gztf98B95rZ2xMKOw0giVBDwc2TBp/w9T3ttSeaNwoaZi/kc0I52
Q01rxYrwcU8lEmbdmBz8mSKh+VXPG+Vfo9f5GJZPgbHKclKCyqeokvxAUwrII/PQ
t/4QkmrNYtWZMDhwOuQRicYb8ndlXuMWy6K2N+LrZJ/dk1Ob29H3pD6TwlHb3/1x
qAAd0wrztp8gm8cm7motnSaugkQAWebVw1/cb3RBkQKBgQDxHpjzTyDTjBg0cDa4
D1mKkxPEk3gg6Xtb/XBubH6JLaP26gWKSEds4nYL/QJilaHP9BKKfTTC20CsVbKd
YbcMaqhaN7xVu7R1WX97enlZqh1leNGvAvusTxs5h4MhLrEr1c6RFpk44wt4KNMJ
63wKnsYByrpeYIZSQc1kIsjreQKBgQDWc8omaiGA9fyUimP+5Kej7w0u5w8Dn2cP
bAIJlZobB0q/uQ9CaTWMVZOtm4+ifRUMevcj+1+yb/zhmdAIhM1wG5rI1nT3aiiV
ZLx/AeTdP3KqzBGgDRAGItTnSKF8tiQFRGFMfGCWlbyssbU0TF6qf5uZTOgwm2WC
iaFIz1LSqwKBgE5I3uPwRvooPBuaa0mrQikpw3tJXfFhnPmq+XwAobysItYh+RaC
jR4fELCnvsR/TIAWAIcSS7UQNpk9YbaTaTkQ0AQqoG09ekO3gRp4Ezo3bz/o0DuA
PnIdZPtysfJuFHvk+SJGMg00Oh8TMiHAYQ+ZqTQfvA60TCgc0TC30oARAoGAcS7p
iT7IcgTiCw/DWPsbU1VOsut2LCZMQYJyzNYtYIiHtgqY+CcJAQkFiUIqG8tCebTI
jTAVwNqEMBl7B5P3zWx0U/2D/DUGOFrTdYDtZqwe++/6eWuLgoGNtofJ20VSW4lM
hQ67954N12NvTKvl5ry0xcMmZMkPWUcEXaY2g0MCgYEAgbdqbEiI8C0PTC+YcPgL
oECmu/akQB67ZQXiUfjyyQVt4JoyfowSl+I5eWzVyGYeldwZ4+K2ngafJlBNavYy
QttR/WSI2WleNTnVYrdMuGM/LdkwL7BxebqSCouabVB+ccfw7AK9Hb1kGhVWQRZW
wDt6E++k3ZJnJG7CY3urVR4=
-----END PRIVATE KEY-----
"""


def _ec_key(scalar: int) -> ec.EllipticCurvePrivateKey:
    return ec.derive_private_key(scalar, ec.SECP256R1())


def _rsa_ek() -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(_RSA_EK.encode(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


_AK_ATTRIBUTES = (
    TPMA_OBJECT.FIXEDTPM
    | TPMA_OBJECT.FIXEDPARENT
    | TPMA_OBJECT.SENSITIVEDATAORIGIN
    | TPMA_OBJECT.USERWITHAUTH
    | TPMA_OBJECT.RESTRICTED
    | TPMA_OBJECT.SIGN_ENCRYPT
)
_SIGNING_ATTRIBUTES = (
    TPMA_OBJECT.FIXEDTPM
    | TPMA_OBJECT.FIXEDPARENT
    | TPMA_OBJECT.SENSITIVEDATAORIGIN
    | TPMA_OBJECT.USERWITHAUTH
    | TPMA_OBJECT.SIGN_ENCRYPT
)
_EK_ATTRIBUTES = (
    TPMA_OBJECT.FIXEDTPM
    | TPMA_OBJECT.FIXEDPARENT
    | TPMA_OBJECT.SENSITIVEDATAORIGIN
    | TPMA_OBJECT.ADMINWITHPOLICY
    | TPMA_OBJECT.RESTRICTED
    | TPMA_OBJECT.DECRYPT
)


@dataclass(frozen=True)
class Evidence:
    """One device's valid evidence, every structure marshalled as it travels."""

    anchors: EkTrustAnchors
    ek_certificates: tuple[bytes, ...]
    """DER, one per EK public area, in the same order."""
    ek_publics: tuple[bytes, ...]
    ak_key: ec.EllipticCurvePrivateKey
    ak_public: bytes
    ak_name: bytes
    quote: bytes
    quote_signature: bytes
    certify: bytes
    certify_signature: bytes
    signing_public_area: bytes
    signing_public_key: bytes


def _pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def sign_as_ak(ak_key: ec.EllipticCurvePrivateKey, message: bytes) -> bytes:
    """A TPMT_SIGNATURE (ECDSA, SHA-256) over `message`, as the AK would make it."""
    r, s = decode_dss_signature(ak_key.sign(message, _ECDSA))
    sig = TPMT_SIGNATURE(sigAlg=TPM2_ALG.ECDSA)
    sig.signature.ecdsa.hash = TPM2_ALG.SHA256
    sig.signature.ecdsa.signatureR = r.to_bytes(32, "big")
    sig.signature.ecdsa.signatureS = s.to_bytes(32, "big")
    return bytes(sig.marshal())


def _name(text: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])


def _certificate(
    subject: str,
    public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
    issuer: str,
    issuer_key: CertificateIssuerPrivateKeyTypes,
    *,
    ca: bool,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(public_key)
        .serial_number(0x51E7 + len(subject))
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
    if ca:
        usage = x509.KeyUsage(False, False, False, False, False, True, True, False, False)
    else:
        usage = x509.KeyUsage(False, False, True, False, False, False, False, False, False)
    builder = builder.add_extension(usage, critical=True)
    if issuer != subject:
        issuer_public = issuer_key.public_key()
        assert isinstance(issuer_public, ec.EllipticCurvePublicKey)
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_public), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256(), ecdsa_deterministic=True)


def _attest(kind: int, attested: TPMU_ATTEST) -> bytes:
    return bytes(
        TPMS_ATTEST(
            magic=0xFF544347,
            type=kind,
            extraData=NONCE,
            clockInfo=TPMS_CLOCK_INFO(clock=5000, resetCount=3, restartCount=1, safe=1),
            attested=attested,
        ).marshal()
    )


def make_evidence() -> Evidence:
    """The device's evidence (the same bytes on every call); every piece passes the
    ingest's checks."""
    root_key = _ec_key(0x0123_4567_89AB_CDEF)
    root = _certificate("test EK root", root_key.public_key(), "test EK root", root_key, ca=True)
    eks: list[ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey] = [
        _rsa_ek(),
        _ec_key(0x2222_3333_4444_5555),
    ]
    ek_publics = tuple(
        bytes(
            TPM2B_PUBLIC.from_pem(
                _pem(ek), objectAttributes=_EK_ATTRIBUTES, symmetric="aes128cfb"
            ).marshal()
        )
        for ek in eks
    )
    ek_certificates = tuple(
        _certificate("test EK", ek.public_key(), "test EK root", root_key, ca=False).public_bytes(
            serialization.Encoding.DER
        )
        for ek in eks
    )

    ak_key = _ec_key(0x6666_7777_8888_9999)
    ak = TPM2B_PUBLIC.from_pem(_pem(ak_key), objectAttributes=_AK_ATTRIBUTES)
    ak.publicArea.parameters.eccDetail.scheme.scheme = TPM2_ALG.ECDSA
    ak.publicArea.parameters.eccDetail.scheme.details.ecdsa.hashAlg = TPM2_ALG.SHA256
    signing_key = _ec_key(0xAAAA_BBBB_CCCC_DDDD)
    signing = TPM2B_PUBLIC.from_pem(_pem(signing_key), objectAttributes=_SIGNING_ATTRIBUTES)
    numbers = signing_key.public_key().public_numbers()

    digest = hashlib.sha256(b"".join(PCRS[i] for i in sorted(PCRS))).digest()
    quote = _attest(
        TPM2_ST.ATTEST_QUOTE,
        TPMU_ATTEST(
            quote=TPMS_QUOTE_INFO(
                pcrSelect=TPML_PCR_SELECTION.parse("sha256:0,7"), pcrDigest=digest
            )
        ),
    )
    certify = _attest(
        TPM2_ST.ATTEST_CERTIFY,
        TPMU_ATTEST(certify=TPMS_CERTIFY_INFO(name=signing.get_name(), qualifiedName=b"")),
    )
    return Evidence(
        anchors=EkTrustAnchors(roots=(root,)),
        ek_certificates=ek_certificates,
        ek_publics=ek_publics,
        ak_key=ak_key,
        ak_public=bytes(ak.marshal()),
        ak_name=bytes(ak.get_name()),
        quote=quote,
        quote_signature=sign_as_ak(ak_key, quote),
        certify=certify,
        certify_signature=sign_as_ak(ak_key, certify),
        signing_public_area=bytes(signing.marshal()),
        signing_public_key=b"\x04" + numbers.x.to_bytes(32, "big") + numbers.y.to_bytes(32, "big"),
    )
