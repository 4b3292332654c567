"""The TPM key store on a real swtpm: signatures, persistence and failure modes."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from client._errors import ClientError, KeyStoreError
from client._tpm_keystore import TpmError, TpmKeyStore, TpmUnavailable
from tests.harness.swtpm import SwtpmInstance, SwtpmProvision


def _verify(public_key: bytes, signature: bytes, data: bytes) -> None:
    key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), public_key)
    key.verify(signature, data, ec.ECDSA(hashes.SHA256()))


def test_tpm_signature_verifies_with_cryptography(swtpm: SwtpmInstance, key_dir: Path) -> None:
    with TpmKeyStore(swtpm.tcti, key_dir) as store:
        signature = store.sign(b'{"envelope": 1}')
        public_key = store.public_key()

    assert store.assurance == "tpm"
    assert len(public_key) == 65
    _verify(public_key, signature, b'{"envelope": 1}')
    with pytest.raises(InvalidSignature):
        _verify(public_key, signature, b'{"envelope": 2}')


def test_keys_survive_reopening_and_blobs_are_private(swtpm: SwtpmInstance, key_dir: Path) -> None:
    with TpmKeyStore(swtpm.tcti, key_dir) as store:
        first = store.public_key()
        ak_name = store.enrollment_material().ak_name
    with TpmKeyStore(swtpm.tcti, key_dir) as store:
        assert store.public_key() == first
        assert store.enrollment_material().ak_name == ak_name
        _verify(first, store.sign(b"after restart"), b"after restart")

    assert sorted(p.name for p in key_dir.iterdir()) == [
        "ak.priv",
        "ak.pub",
        "signing.priv",
        "signing.pub",
    ]
    assert stat.S_IMODE((key_dir / "signing.priv").stat().st_mode) == 0o600


def test_unreachable_tpm_is_tpm_unavailable(key_dir: Path) -> None:
    with SwtpmInstance() as gone:
        tcti = gone.tcti
    with pytest.raises(TpmUnavailable) as caught:
        TpmKeyStore(tcti, key_dir)
    assert isinstance(caught.value, KeyStoreError)
    assert isinstance(caught.value, ClientError)


def test_tpm_stopping_mid_run_raises_tpm_error(
    swtpm_provision: SwtpmProvision, key_dir: Path
) -> None:
    with SwtpmInstance(swtpm_provision) as tpm:
        store = TpmKeyStore(tpm.tcti, key_dir)
    with pytest.raises(TpmError, match="cannot sign"):
        store.sign(b"no TPM any more")
    store.close()


def test_closed_store_refuses_to_sign(swtpm: SwtpmInstance, key_dir: Path) -> None:
    store = TpmKeyStore(swtpm.tcti, key_dir)
    store.close()
    with pytest.raises(TpmUnavailable, match="closed"):
        store.sign(b"late")
