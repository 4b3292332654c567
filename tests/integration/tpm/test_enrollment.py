"""Enrollment on a real swtpm: EK certificate chain and credential activation."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509

from client._tpm_keystore import TpmError, TpmKeyStore
from ingest.attestation import (
    AttestationError,
    AttestationReason,
    EkTrustAnchors,
    check_activation,
    check_ak_public,
    make_challenge,
    verify_ek_certificate,
)
from tests.harness.swtpm import SwtpmInstance
from tests.integration.tpm._ingest_kit import other_root


def test_ek_certificate_chains_to_the_swtpm_ca_root(
    swtpm: SwtpmInstance, ek_anchors: EkTrustAnchors, key_dir: Path
) -> None:
    with TpmKeyStore(swtpm.tcti, key_dir) as store:
        material = store.enrollment_material()

    ek = verify_ek_certificate(ek_anchors, material.ek_certificate, material.ek_public)

    cert = x509.load_der_x509_certificate(material.ek_certificate)
    assert cert.issuer.rfc4514_string() == "CN=swtpm-localca"
    assert bytes(ek.publicArea.unique.rsa) != b""


def test_ek_certificate_from_another_root_is_unknown_ek_root(
    swtpm: SwtpmInstance, key_dir: Path, tmp_path: Path
) -> None:
    with TpmKeyStore(swtpm.tcti, key_dir) as store:
        material = store.enrollment_material()
    anchors = EkTrustAnchors.from_pem_files([other_root(tmp_path)], [swtpm.issuer_cert])

    with pytest.raises(AttestationError) as caught:
        verify_ek_certificate(anchors, material.ek_certificate, material.ek_public)

    assert caught.value.reason == AttestationReason.UNKNOWN_EK_ROOT
    assert 400 <= caught.value.status_code < 500


def test_ek_certificate_for_another_ek_is_rejected(
    swtpm: SwtpmInstance, ek_anchors: EkTrustAnchors, key_dir: Path
) -> None:
    with TpmKeyStore(swtpm.tcti, key_dir) as store:
        material = store.enrollment_material()

    # A genuine certificate presented with some other key as "the EK".
    with pytest.raises(AttestationError) as caught:
        verify_ek_certificate(ek_anchors, material.ek_certificate, material.ak_public)

    assert caught.value.reason == AttestationReason.EK_CERT_MISMATCH


def test_credential_activation_proves_the_ak_is_in_the_certified_tpm(
    swtpm: SwtpmInstance, ek_anchors: EkTrustAnchors, key_dir: Path
) -> None:
    with TpmKeyStore(swtpm.tcti, key_dir) as store:
        material = store.enrollment_material()
        ek = verify_ek_certificate(ek_anchors, material.ek_certificate, material.ek_public)
        check_ak_public(material.ak_public, material.ak_name)
        challenge = make_challenge(ek, material.ak_name)

        proof = store.activate_credential(challenge.credential_blob, challenge.secret)

    check_activation(challenge, proof)  # does not raise


def test_challenge_bound_to_another_ak_cannot_be_answered(
    swtpm: SwtpmInstance, ek_anchors: EkTrustAnchors, key_dir: Path, tmp_path: Path
) -> None:
    # A second key store in the same TPM has its own AK: a challenge bound to that AK's
    # name is not something this device's AK can activate.
    with TpmKeyStore(swtpm.tcti, tmp_path / "other-device") as other:
        other_ak_name = other.enrollment_material().ak_name
    with TpmKeyStore(swtpm.tcti, key_dir) as store:
        material = store.enrollment_material()
        ek = verify_ek_certificate(ek_anchors, material.ek_certificate, material.ek_public)
        challenge = make_challenge(ek, other_ak_name)
        with pytest.raises(TpmError) as failed:
            store.activate_credential(challenge.credential_blob, challenge.secret)
    assert "activate the credential" in str(failed.value)


def test_wrong_activation_proof_is_rejected(
    swtpm: SwtpmInstance, ek_anchors: EkTrustAnchors, key_dir: Path
) -> None:
    with TpmKeyStore(swtpm.tcti, key_dir) as store:
        material = store.enrollment_material()
        ek = verify_ek_certificate(ek_anchors, material.ek_certificate, material.ek_public)
        first = make_challenge(ek, material.ak_name)
        second = make_challenge(ek, material.ak_name)
        proof_of_second = store.activate_credential(second.credential_blob, second.secret)

    with pytest.raises(AttestationError) as caught:
        check_activation(first, proof_of_second)
    assert caught.value.reason == AttestationReason.BAD_ACTIVATION_PROOF


def test_ak_name_that_is_not_the_ak_is_rejected(swtpm: SwtpmInstance, key_dir: Path) -> None:
    with TpmKeyStore(swtpm.tcti, key_dir) as store:
        material = store.enrollment_material()
    with pytest.raises(AttestationError) as caught:
        check_ak_public(material.ak_public, material.ak_name[:-1] + b"\x00")
    assert caught.value.reason == AttestationReason.AK_NAME_MISMATCH
