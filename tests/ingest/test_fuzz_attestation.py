"""No TPM evidence a device can send makes enrollment or attestation fail with anything
but an `AttestationError` naming its reason: property-based tests on byte-level
mutations of valid structures (`tests/ingest/attestation_evidence.py`).

Generated cases: 1,500 enrollments (EK certificate, EK and AK public areas, AK name),
1,500 quotes, 1,500 certifications, and 3,000 arbitrary byte strings through each
parser: 7,500 here; with `test_fuzz_envelopes.py` (2,500) and `test_schemathesis.py`
(843), 10,843 in `make test`. A mutated quote or certification is signed again by the
AK on most draws, so the checks behind the signature see it too. Derandomized, with no
example database: every run tries the same cases.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tpm2_pytss.constants import TPM2_ALG, TPMA_OBJECT
from tpm2_pytss.types import TPM2B_PUBLIC

from ingest._attestation_service import ek_device_id
from ingest.attestation import (
    AttestationError,
    AttestationReason,
    check_ak_public,
    make_challenge,
    verify_ek_certificate,
    verify_key_certification,
    verify_quote,
)
from ingest.attestation._tpm_structs import (
    parse_attest,
    parse_public,
    public_key_of,
    tpm_name,
    verify_tpm_signature,
)
from tests.ingest.attestation_evidence import (
    NONCE,
    NOW,
    PCRS,
    POLICY,
    make_evidence,
    sign_as_ak,
)

EVIDENCE = make_evidence()

FUZZ = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Two-byte words a TPM structure holds at its algorithm and size fields: written over
# any offset, they turn a valid structure into a plausible, wrong one.
_WORDS = [
    int(alg)
    for alg in (
        TPM2_ALG.NULL,
        TPM2_ALG.RSA,
        TPM2_ALG.ECC,
        TPM2_ALG.KEYEDHASH,
        TPM2_ALG.SYMCIPHER,
        TPM2_ALG.SHA1,
        TPM2_ALG.SHA256,
        TPM2_ALG.SHA512,
        TPM2_ALG.SM3_256,
        TPM2_ALG.AES,
        TPM2_ALG.CFB,
        TPM2_ALG.ECDSA,
        TPM2_ALG.RSASSA,
        TPM2_ALG.RSAPSS,
    )
] + [0x0000, 0x0001, 0x0003, 0x0020, 0x0100, 0x7FFF, 0xFFFF]


def mutations(data: bytes) -> st.SearchStrategy[bytes]:
    """`data` unchanged, with bytes or words overwritten, cut, extended, or spliced."""

    def overwrite(edits: list[tuple[int, bytes]]) -> bytes:
        out = bytearray(data)
        for offset, chunk in edits:
            out[offset : offset + len(chunk)] = chunk
        return bytes(out[: len(data)])

    offsets = st.integers(0, max(len(data) - 1, 0))
    byte = st.integers(0, 255).map(lambda b: bytes([b]))
    word = st.sampled_from(_WORDS).map(lambda w: w.to_bytes(2, "big"))
    return st.one_of(
        st.just(data),
        st.lists(st.tuples(offsets, byte | word), min_size=1, max_size=4).map(overwrite),
        st.integers(0, len(data)).map(lambda n: data[:n]),
        st.binary(min_size=1, max_size=16).map(lambda tail: data + tail),
        st.tuples(offsets, st.binary(min_size=1, max_size=8)).map(
            lambda cut: data[: cut[0]] + cut[1] + data[cut[0] :]
        ),
    )


def refused_with_a_reason(check: Callable[[], Any]) -> None:
    """`check` passes or raises an `AttestationError` (a 4xx) naming its reason."""
    try:
        check()
    except AttestationError as exc:
        refusal = exc
    else:
        return
    assert isinstance(refusal.attestation_reason, AttestationReason)
    assert 400 <= refusal.status_code < 500
    assert refusal.detail


# --- enrollment ------------------------------------------------------------------------


def _enroll(
    ek_certificate: bytes, ek_public: bytes, ak_public: bytes, ak_name: bytes | None
) -> None:
    """The checks `AttestationService.enroll` runs, in its order, without the registry."""
    ek_device_id(ek_certificate)
    ek = verify_ek_certificate(EVIDENCE.anchors, ek_certificate, ek_public, now=NOW)
    if ak_name is None:
        ak_name = tpm_name(parse_public(ak_public, "AK public"))
    check_ak_public(ak_public, ak_name)
    make_challenge(ek, ak_name)


def enrollments() -> st.SearchStrategy[tuple[bytes, bytes, bytes, bytes | None]]:
    """One EK's certificate and public area, the AK public area and name (or none, to
    be computed), each perhaps mutated."""
    per_ek = [
        st.tuples(
            mutations(cert),
            mutations(public),
            mutations(EVIDENCE.ak_public),
            st.none() | mutations(EVIDENCE.ak_name),
        )
        for cert, public in zip(EVIDENCE.ek_certificates, EVIDENCE.ek_publics, strict=True)
    ]
    return st.one_of(per_ek)


def test_valid_enrollment_evidence_passes() -> None:
    for cert, public in zip(EVIDENCE.ek_certificates, EVIDENCE.ek_publics, strict=True):
        _enroll(cert, public, EVIDENCE.ak_public, EVIDENCE.ak_name)


@settings(FUZZ, max_examples=1_500)
@given(enrollments())
def test_enrollment_refuses_mutated_evidence_with_a_reason(
    evidence: tuple[bytes, bytes, bytes, bytes | None],
) -> None:
    refused_with_a_reason(lambda: _enroll(*evidence))


def _with_name_alg(public: bytes, alg: TPM2_ALG) -> bytes:
    parsed, _ = TPM2B_PUBLIC.unmarshal(public)
    parsed.publicArea.nameAlg = alg
    return bytes(parsed.marshal())


def test_an_ak_whose_name_alg_is_null_is_malformed_evidence() -> None:
    """An earlier finding (a 500): a nameAlg that is not a hash has no TPM name."""
    ak_public = _with_name_alg(EVIDENCE.ak_public, TPM2_ALG.NULL)
    with pytest.raises(AttestationError) as caught:
        _enroll(EVIDENCE.ek_certificates[0], EVIDENCE.ek_publics[0], ak_public, None)
    assert caught.value.attestation_reason is AttestationReason.MALFORMED_EVIDENCE


@pytest.mark.parametrize("curve", [ec.SECP256K1(), ec.SECP521R1(), ec.BrainpoolP256R1()])
def test_an_ek_certificate_on_an_unsupported_curve_is_refused(curve: ec.EllipticCurve) -> None:
    """An earlier finding (a 500 with no authentication): the certificate's key is on a
    curve no TPM EK uses; the certificate is self-signed or signed by the test root."""
    key = ec.generate_private_key(curve)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "odd curve")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW)
        .not_valid_after(NOW.replace(year=2030))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.DER)
    )
    with pytest.raises(AttestationError) as caught:
        _enroll(cert, EVIDENCE.ek_publics[1], EVIDENCE.ak_public, None)
    assert caught.value.attestation_reason is AttestationReason.UNKNOWN_EK_ROOT


# --- quotes and certifications ---------------------------------------------------------


def signed_mutations(attest: bytes, signature: bytes) -> st.SearchStrategy[tuple[bytes, bytes]]:
    """A mutated TPMS_ATTEST and, on three draws in four, the AK's signature over it."""
    resigned = mutations(attest).map(lambda a: (a, sign_as_ak(EVIDENCE.ak_key, a)))
    return st.one_of(
        resigned, resigned, resigned, st.tuples(mutations(attest), mutations(signature))
    )


@settings(FUZZ, max_examples=1_500)
@given(
    ak_public=mutations(EVIDENCE.ak_public),
    quote=signed_mutations(EVIDENCE.quote, EVIDENCE.quote_signature),
    pcrs=st.dictionaries(st.integers(-1, 30), st.binary(max_size=40)) | st.just(PCRS),
    nonce=st.just(NONCE) | st.binary(max_size=40),
)
def test_quotes_are_refused_only_with_a_reason(
    ak_public: bytes, quote: tuple[bytes, bytes], pcrs: dict[int, bytes], nonce: bytes
) -> None:
    attest, signature = quote
    refused_with_a_reason(
        lambda: verify_quote(ak_public, attest, signature, pcrs, nonce=nonce, policy=POLICY)
    )


@settings(FUZZ, max_examples=1_500)
@given(
    ak_public=mutations(EVIDENCE.ak_public),
    certify=signed_mutations(EVIDENCE.certify, EVIDENCE.certify_signature),
    area=mutations(EVIDENCE.signing_public_area),
    presented=mutations(EVIDENCE.signing_public_key),
)
def test_certifications_are_refused_only_with_a_reason(
    ak_public: bytes, certify: tuple[bytes, bytes], area: bytes, presented: bytes
) -> None:
    attest, signature = certify
    refused_with_a_reason(
        lambda: verify_key_certification(
            ak_public,
            attest,
            signature,
            nonce=NONCE,
            signing_public_area=area,
            presented_key=presented,
        )
    )


# --- every parser, on arbitrary bytes --------------------------------------------------


def _parse_everything(data: bytes) -> None:
    ak = parse_public(EVIDENCE.ak_public, "AK public")
    for check in (
        lambda: public_key_of(parse_public(data, "public")),
        lambda: tpm_name(parse_public(data, "public")),
        lambda: parse_attest(data),
        lambda: verify_tpm_signature(ak, b"message", data, AttestationReason.QUOTE_BAD_SIGNATURE),
        lambda: make_challenge(parse_public(data, "EK public"), EVIDENCE.ak_name),
    ):
        refused_with_a_reason(check)


@settings(FUZZ, max_examples=3_000)
@given(st.binary(max_size=600))
def test_every_parser_refuses_arbitrary_bytes_with_a_reason(data: bytes) -> None:
    _parse_everything(data)


def test_a_restricted_decrypt_key_is_not_an_ak() -> None:
    """The mutations above reach this check too; here it is pinned by hand."""
    parsed, _ = TPM2B_PUBLIC.unmarshal(EVIDENCE.ak_public)
    parsed.publicArea.objectAttributes |= TPMA_OBJECT.DECRYPT
    public = bytes(parsed.marshal())
    with pytest.raises(AttestationError) as caught:
        check_ak_public(public, bytes(parsed.get_name()))
    assert caught.value.attestation_reason is AttestationReason.AK_NOT_RESTRICTED


def test_an_ek_certificate_whose_key_type_is_unknown_is_refused() -> None:
    """A finding of the mutations above (a 500 with no authentication): the key's
    algorithm identifier names no algorithm `cryptography` can load."""
    rsa_encryption = bytes.fromhex("2a864886f70d010101")  # 1.2.840.113549.1.1.1
    cert = EVIDENCE.ek_certificates[0].replace(rsa_encryption, b"\x00" + rsa_encryption[1:], 1)
    assert ek_device_id(cert) is None
    with pytest.raises(AttestationError) as caught:
        _enroll(cert, EVIDENCE.ek_publics[0], EVIDENCE.ak_public, None)
    assert 400 <= caught.value.status_code < 500


def test_an_ek_certificate_of_an_unknown_x509_version_is_malformed_evidence() -> None:
    """A finding of the mutations above (a 500 with no authentication): `cryptography`
    refuses a certificate version other than v1 or v3 with an exception of its own."""
    v3 = b"\xa0\x03\x02\x01\x02"  # [0] EXPLICIT INTEGER 2
    cert = EVIDENCE.ek_certificates[0].replace(v3, b"\xa0\x03\x02\x01\x07", 1)
    assert ek_device_id(cert) is None
    with pytest.raises(AttestationError) as caught:
        _enroll(cert, EVIDENCE.ek_publics[0], EVIDENCE.ak_public, None)
    assert caught.value.attestation_reason is AttestationReason.MALFORMED_EVIDENCE


def test_an_ek_certificate_whose_issuer_does_not_parse_is_refused() -> None:
    """A finding of the mutations above: `cryptography` parses a field when it is read,
    so a mangled issuer raised (a 500) while the refusal's detail was being written."""
    issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test EK root")]).public_bytes()
    cert = EVIDENCE.ek_certificates[0].replace(issuer, b"\x10" + issuer[1:], 1)
    assert cert != EVIDENCE.ek_certificates[0]
    with pytest.raises(AttestationError) as caught:
        _enroll(cert, EVIDENCE.ek_publics[0], EVIDENCE.ak_public, None)
    assert 400 <= caught.value.status_code < 500
