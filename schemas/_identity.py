"""Device identity derived from the device's signing key.

A device with a software key is self-certifying: `device_id` is derived from its public
key, so an envelope can only claim the device whose key signed it. A device that
enrolled a TPM is named after its endorsement key instead (`tpm_device_id_for`): the
id is the TPM's, so it survives a new signing key or a wiped client state, and a
revocation sticks to the hardware (re-enrolling with a fresh AK cannot mint a new id).
"""

from __future__ import annotations

import hashlib

__all__ = ["device_id_for", "key_fingerprint", "tpm_device_id_for"]


def key_fingerprint(public_key: bytes) -> str:
    """SHA-256 of the raw public key bytes, lowercase hex (64 characters)."""
    return hashlib.sha256(public_key).hexdigest()


def device_id_for(public_key: bytes) -> str:
    """The device id a software key may claim: ``dev-`` and 32 hex digits of its fingerprint."""
    return "dev-" + key_fingerprint(public_key)[:32]


def tpm_device_id_for(ek_public_key_der: bytes) -> str:
    """The id of a TPM device: ``tpm-`` and 32 hex digits of the SHA-256 of its EK's
    public key as DER SubjectPublicKeyInfo (as in its EK certificate)."""
    return "tpm-" + key_fingerprint(ek_public_key_der)[:32]
