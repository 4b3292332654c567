"""Attestation on a real swtpm: quotes over server nonces and the signing key's certification."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from tpm2_pytss.constants import TPMA_OBJECT

from client._tpm_keystore import SIGNING_KEY_ATTRIBUTES, TpmKeyStore
from ingest.attestation import (
    AttestationError,
    AttestationReason,
    NonceStore,
    PcrPolicy,
    TpmClock,
    verify_key_certification,
    verify_quote,
)
from tests.harness.swtpm import SwtpmInstance
from tests.integration.tpm._device import certify_foreign_key, extend_pcr

DEVICE = "dev-under-test"
ZERO = bytes(32)
# PCRs 0..7 after a startup-clear on swtpm: nothing has extended them.
BOOT_POLICY = PcrPolicy(selection=(0, 1, 7), allowed={0: frozenset({ZERO}), 7: frozenset({ZERO})})


class FakeClock:
    """A clock the test moves by hand, so expiry needs no waiting."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _ak_public(store: TpmKeyStore) -> bytes:
    return store.enrollment_material().ak_public


def test_quote_on_a_fresh_nonce_verifies(swtpm: SwtpmInstance, key_dir: Path) -> None:
    nonces = NonceStore()
    nonce = nonces.issue(DEVICE)
    with TpmKeyStore(swtpm.tcti, key_dir) as store:
        quote = store.quote(nonce, BOOT_POLICY.selection)
        ak_public = _ak_public(store)

    nonces.consume(DEVICE, nonce)
    clock = verify_quote(
        ak_public, quote.attest, quote.signature, quote.pcr_values, nonce=nonce, policy=BOOT_POLICY
    )

    assert quote.pcr_values == {0: ZERO, 1: ZERO, 7: ZERO}
    # Counters in clear (not obfuscated): a few resets by swtpm_setup, no restart.
    assert clock.reset_count < 16
    assert clock.restart_count == 0
    assert clock.clock > 0


def test_reused_nonce_is_rejected(swtpm: SwtpmInstance, key_dir: Path) -> None:
    nonces = NonceStore()
    nonce = nonces.issue(DEVICE)
    with TpmKeyStore(swtpm.tcti, key_dir) as store:
        store.quote(nonce, BOOT_POLICY.selection)
        store.quote(nonce, BOOT_POLICY.selection)
    nonces.consume(DEVICE, nonce)

    with pytest.raises(AttestationError) as caught:
        nonces.consume(DEVICE, nonce)

    assert caught.value.reason == AttestationReason.NONCE_REUSED


def test_expired_nonce_is_rejected(swtpm: SwtpmInstance, key_dir: Path) -> None:
    clock = FakeClock()
    nonces = NonceStore(ttl_seconds=30, clock=clock)
    nonce = nonces.issue(DEVICE)
    with TpmKeyStore(swtpm.tcti, key_dir) as store:
        store.quote(nonce, BOOT_POLICY.selection)
    clock.now += 31

    with pytest.raises(AttestationError) as caught:
        nonces.consume(DEVICE, nonce)

    assert caught.value.reason == AttestationReason.NONCE_EXPIRED


def test_quote_signed_by_another_ak_is_rejected(
    swtpm: SwtpmInstance, key_dir: Path, tmp_path: Path
) -> None:
    nonce = NonceStore().issue(DEVICE)
    with TpmKeyStore(swtpm.tcti, key_dir) as enrolled:
        enrolled_ak = _ak_public(enrolled)
    with TpmKeyStore(swtpm.tcti, tmp_path / "impostor") as impostor:
        quote = impostor.quote(nonce, BOOT_POLICY.selection)

    with pytest.raises(AttestationError) as caught:
        verify_quote(
            enrolled_ak,
            quote.attest,
            quote.signature,
            quote.pcr_values,
            nonce=nonce,
            policy=BOOT_POLICY,
        )

    assert caught.value.reason == AttestationReason.QUOTE_BAD_SIGNATURE


def test_extended_pcr_outside_policy_is_rejected(swtpm: SwtpmInstance, key_dir: Path) -> None:
    nonce = NonceStore().issue(DEVICE)
    extend_pcr(swtpm.tcti, 7, b"an unexpected bootloader")
    with TpmKeyStore(swtpm.tcti, key_dir) as store:
        quote = store.quote(nonce, BOOT_POLICY.selection)
        ak_public = _ak_public(store)

    with pytest.raises(AttestationError) as caught:
        verify_quote(
            ak_public,
            quote.attest,
            quote.signature,
            quote.pcr_values,
            nonce=nonce,
            policy=BOOT_POLICY,
        )

    assert caught.value.reason == AttestationReason.PCR_NOT_ALLOWED
    expected = hashlib.sha256(ZERO + hashlib.sha256(b"an unexpected bootloader").digest()).digest()
    assert quote.pcr_values[7] == expected


def test_extended_pcr_allowed_by_policy_verifies(swtpm: SwtpmInstance, key_dir: Path) -> None:
    event = hashlib.sha256(b"the signed bootloader").digest()
    policy = PcrPolicy(
        selection=(7,), allowed={7: frozenset({hashlib.sha256(ZERO + event).digest()})}
    )
    nonce = NonceStore().issue(DEVICE)
    extend_pcr(swtpm.tcti, 7, b"the signed bootloader")
    with TpmKeyStore(swtpm.tcti, key_dir) as store:
        quote = store.quote(nonce, policy.selection)
        ak_public = _ak_public(store)

    verify_quote(
        ak_public, quote.attest, quote.signature, quote.pcr_values, nonce=nonce, policy=policy
    )


def test_pcr_values_that_differ_from_the_quoted_digest_are_rejected(
    swtpm: SwtpmInstance, key_dir: Path
) -> None:
    nonce = NonceStore().issue(DEVICE)
    extend_pcr(swtpm.tcti, 7, b"an unexpected bootloader")
    with TpmKeyStore(swtpm.tcti, key_dir) as store:
        quote = store.quote(nonce, BOOT_POLICY.selection)
        ak_public = _ak_public(store)
    claimed = {**quote.pcr_values, 7: ZERO}  # the device lies about PCR 7

    with pytest.raises(AttestationError) as caught:
        verify_quote(
            ak_public, quote.attest, quote.signature, claimed, nonce=nonce, policy=BOOT_POLICY
        )

    assert caught.value.reason == AttestationReason.PCR_DIGEST_MISMATCH


def test_quote_over_another_nonce_is_rejected(swtpm: SwtpmInstance, key_dir: Path) -> None:
    nonces = NonceStore()
    with TpmKeyStore(swtpm.tcti, key_dir) as store:
        quote = store.quote(nonces.issue(DEVICE), BOOT_POLICY.selection)
        ak_public = _ak_public(store)

    with pytest.raises(AttestationError) as caught:
        verify_quote(
            ak_public,
            quote.attest,
            quote.signature,
            quote.pcr_values,
            nonce=nonces.issue(DEVICE),
            policy=BOOT_POLICY,
        )

    assert caught.value.reason == AttestationReason.NONCE_MISMATCH


def test_replayed_older_quote_is_clock_went_back(swtpm: SwtpmInstance, key_dir: Path) -> None:
    first_nonce, second_nonce = b"first-nonce-0123", b"second-nonce-012"
    with TpmKeyStore(swtpm.tcti, key_dir) as store:
        first = store.quote(first_nonce, BOOT_POLICY.selection)
        store.sign(b"let the TPM clock move on")
        second = store.quote(second_nonce, BOOT_POLICY.selection)
        ak_public = _ak_public(store)
    newer = verify_quote(
        ak_public,
        second.attest,
        second.signature,
        second.pcr_values,
        nonce=second_nonce,
        policy=BOOT_POLICY,
    )
    older = TpmClock(newer.reset_count, newer.restart_count, newer.clock + 1)

    with pytest.raises(AttestationError) as caught:
        verify_quote(
            ak_public,
            first.attest,
            first.signature,
            first.pcr_values,
            nonce=first_nonce,
            policy=BOOT_POLICY,
            last_clock=older,
        )

    assert caught.value.reason == AttestationReason.CLOCK_WENT_BACK


def test_certified_signing_key_is_accepted(swtpm: SwtpmInstance, key_dir: Path) -> None:
    nonce = NonceStore().issue(DEVICE)
    with TpmKeyStore(swtpm.tcti, key_dir) as store:
        certification = store.certify_signing_key(nonce)
        ak_public = _ak_public(store)
        area = store.signing_public_area()
        key = store.public_key()

    verify_key_certification(
        ak_public,
        certification.attest,
        certification.signature,
        nonce=nonce,
        signing_public_area=area,
        presented_key=key,
    )


def test_certification_of_another_key_than_presented_is_rejected(
    swtpm: SwtpmInstance, key_dir: Path, tmp_path: Path
) -> None:
    nonce = NonceStore().issue(DEVICE)
    with TpmKeyStore(swtpm.tcti, tmp_path / "other") as other:
        other_key = other.public_key()
    with TpmKeyStore(swtpm.tcti, key_dir) as store:
        certification = store.certify_signing_key(nonce)
        ak_public = _ak_public(store)
        area = store.signing_public_area()

    with pytest.raises(AttestationError) as caught:
        verify_key_certification(
            ak_public,
            certification.attest,
            certification.signature,
            nonce=nonce,
            signing_public_area=area,
            presented_key=other_key,
        )
    assert caught.value.reason == AttestationReason.SIGNING_KEY_MISMATCH


@pytest.mark.parametrize(
    ("attributes", "reason"),
    [
        pytest.param(
            SIGNING_KEY_ATTRIBUTES | TPMA_OBJECT.RESTRICTED,
            AttestationReason.SIGNING_KEY_RESTRICTED,
            id="restricted",
        ),
        pytest.param(
            TPMA_OBJECT.SENSITIVEDATAORIGIN | TPMA_OBJECT.USERWITHAUTH | TPMA_OBJECT.SIGN_ENCRYPT,
            AttestationReason.SIGNING_KEY_EXPORTABLE,
            id="exportable",
        ),
    ],
)
def test_weaker_signing_key_is_rejected(
    swtpm: SwtpmInstance, key_dir: Path, attributes: TPMA_OBJECT, reason: AttestationReason
) -> None:
    nonce = NonceStore().issue(DEVICE)
    with TpmKeyStore(swtpm.tcti, key_dir) as store:  # enroll: creates the AK blobs
        ak_public = _ak_public(store)
    point, area, certification = certify_foreign_key(swtpm.tcti, key_dir, attributes, nonce)

    with pytest.raises(AttestationError) as caught:
        verify_key_certification(
            ak_public,
            certification.attest,
            certification.signature,
            nonce=nonce,
            signing_public_area=area,
            presented_key=point,
        )

    assert caught.value.reason == reason
