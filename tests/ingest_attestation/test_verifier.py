"""The pure attestation checks, on evidence built in software (no TPM needed)."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from tpm2_pytss.constants import TPM2_ALG, TPM2_ST, TPMA_OBJECT
from tpm2_pytss.types import (
    TPM2B_PUBLIC,
    TPML_PCR_SELECTION,
    TPMS_ATTEST,
    TPMS_CLOCK_INFO,
    TPMS_QUOTE_INFO,
    TPMT_SIGNATURE,
    TPMU_ATTEST,
)

import ingest.attestation as attestation
from ingest.attestation import (
    AttestationError,
    AttestationReason,
    NonceStore,
    PcrPolicy,
    TpmClock,
    verify_quote,
)

NONCE = b"n" * 32
POLICY = PcrPolicy(selection=(0, 7), allowed={0: frozenset({bytes(32)})})


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class SoftwareAk:
    """A P-256 key shaped like a TPM AK, to sign hand-made TPMS_ATTEST structures."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        pem = self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.public = bytes(
            TPM2B_PUBLIC.from_pem(
                pem, objectAttributes=TPMA_OBJECT.RESTRICTED | TPMA_OBJECT.SIGN_ENCRYPT
            ).marshal()
        )

    def sign(self, message: bytes) -> bytes:
        r, s = decode_dss_signature(self.key.sign(message, ec.ECDSA(hashes.SHA256())))
        sig = TPMT_SIGNATURE(sigAlg=TPM2_ALG.ECDSA)
        sig.signature.ecdsa.hash = TPM2_ALG.SHA256
        sig.signature.ecdsa.signatureR = r.to_bytes(32, "big")
        sig.signature.ecdsa.signatureS = s.to_bytes(32, "big")
        return bytes(sig.marshal())


def _quote(
    pcrs: dict[int, bytes], *, magic: int = 0xFF544347, kind: int = TPM2_ST.ATTEST_QUOTE
) -> bytes:
    digest = hashlib.sha256(b"".join(pcrs[i] for i in sorted(pcrs))).digest()
    attest = TPMS_ATTEST(
        magic=magic,
        type=kind,
        extraData=NONCE,
        clockInfo=TPMS_CLOCK_INFO(clock=5000, resetCount=3, restartCount=1, safe=1),
        attested=TPMU_ATTEST(
            quote=TPMS_QUOTE_INFO(
                pcrSelect=TPML_PCR_SELECTION.parse("sha256:" + ",".join(map(str, sorted(pcrs)))),
                pcrDigest=digest,
            )
        ),
    )
    return bytes(attest.marshal())


PCRS = {0: bytes(32), 7: b"\x07" * 32}


def test_public_names_are_pinned() -> None:
    assert set(attestation.__all__) == {
        "AttestationError",
        "AttestationReason",
        "CredentialChallenge",
        "EkTrustAnchors",
        "NonceStore",
        "PcrPolicy",
        "TpmClock",
        "check_activation",
        "check_ak_public",
        "make_challenge",
        "verify_ek_certificate",
        "verify_key_certification",
        "verify_quote",
    }


def test_well_formed_quote_verifies_and_reports_its_clock() -> None:
    ak = SoftwareAk()
    attest = _quote(PCRS)
    clock = verify_quote(ak.public, attest, ak.sign(attest), PCRS, nonce=NONCE, policy=POLICY)
    assert clock == TpmClock(reset_count=3, restart_count=1, clock=5000)


def test_structure_not_made_by_a_tpm_is_rejected() -> None:
    ak = SoftwareAk()
    attest = _quote(PCRS, magic=0x12345678)
    with pytest.raises(AttestationError) as caught:
        verify_quote(ak.public, attest, ak.sign(attest), PCRS, nonce=NONCE, policy=POLICY)
    assert caught.value.reason == AttestationReason.NOT_TPM_GENERATED


def test_certify_structure_passed_as_a_quote_is_rejected() -> None:
    ak = SoftwareAk()
    attest = _quote(PCRS, kind=TPM2_ST.ATTEST_CERTIFY)
    with pytest.raises(AttestationError) as caught:
        verify_quote(ak.public, attest, ak.sign(attest), PCRS, nonce=NONCE, policy=POLICY)
    assert caught.value.reason == AttestationReason.WRONG_ATTEST_TYPE


def test_quote_of_other_pcrs_than_policy_selects_is_rejected() -> None:
    ak = SoftwareAk()
    pcrs = {0: bytes(32)}
    attest = _quote(pcrs)
    with pytest.raises(AttestationError) as caught:
        verify_quote(ak.public, attest, ak.sign(attest), pcrs, nonce=NONCE, policy=POLICY)
    assert caught.value.reason == AttestationReason.PCR_SELECTION_MISMATCH


@pytest.mark.parametrize(
    ("last", "went_back"),
    [
        (TpmClock(3, 1, 4999), False),
        (TpmClock(3, 1, 5001), True),
        (TpmClock(3, 2, 10), True),
        (TpmClock(4, 0, 10), True),
        (TpmClock(2, 9, 10), False),
    ],
)
def test_clock_going_back_is_rejected(last: TpmClock, went_back: bool) -> None:
    ak = SoftwareAk()
    attest = _quote(PCRS)
    if not went_back:
        verify_quote(
            ak.public, attest, ak.sign(attest), PCRS, nonce=NONCE, policy=POLICY, last_clock=last
        )
        return
    with pytest.raises(AttestationError) as caught:
        verify_quote(
            ak.public, attest, ak.sign(attest), PCRS, nonce=NONCE, policy=POLICY, last_clock=last
        )
    assert caught.value.reason == AttestationReason.CLOCK_WENT_BACK
    assert caught.value.status_code == 403


@pytest.mark.parametrize("garbage", [b"", b"\x00\x01", b"\xff" * 7])
def test_garbage_evidence_is_malformed_not_a_crash(garbage: bytes) -> None:
    ak = SoftwareAk()
    attest = _quote(PCRS)
    with pytest.raises(AttestationError) as caught:
        verify_quote(ak.public, attest, garbage, PCRS, nonce=NONCE, policy=POLICY)
    assert caught.value.reason == AttestationReason.MALFORMED_EVIDENCE
    assert caught.value.status_code == 400
    with pytest.raises(AttestationError) as caught:
        verify_quote(garbage, attest, ak.sign(attest), PCRS, nonce=NONCE, policy=POLICY)
    assert caught.value.reason == AttestationReason.MALFORMED_EVIDENCE


def test_nonce_is_single_use_per_device_and_expires() -> None:
    clock = FakeClock()
    nonces = NonceStore(ttl_seconds=10, clock=clock)
    first = nonces.issue("dev-a")
    nonces.consume("dev-a", first)
    with pytest.raises(AttestationError) as reused:
        nonces.consume("dev-a", first)
    assert reused.value.reason == AttestationReason.NONCE_REUSED
    assert reused.value.status_code == 409

    second = nonces.issue("dev-a")
    with pytest.raises(AttestationError) as other_device:
        nonces.consume("dev-b", second)
    assert other_device.value.reason == AttestationReason.NONCE_UNKNOWN

    clock.now += 10
    with pytest.raises(AttestationError) as expired:
        nonces.consume("dev-a", second)
    assert expired.value.reason == AttestationReason.NONCE_EXPIRED


def test_nonce_store_forgets_old_nonces() -> None:
    clock = FakeClock()
    nonces = NonceStore(ttl_seconds=10, clock=clock)
    for _ in range(5):
        nonces.issue("dev-a")
    clock.now += 25
    nonces.issue("dev-a")
    assert len(nonces) == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"selection": ()},
        {"selection": (24,)},
        {"selection": (7, 0)},
        {"selection": (0,), "allowed": {7: frozenset()}},
    ],
)
def test_bad_pcr_policy_is_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="PCR"):
        PcrPolicy(**kwargs)  # type: ignore[arg-type]
