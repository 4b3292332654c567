"""Device identity derived from the device's signing key.

Until a device enrolls with a TPM (see the attestation design), its identity is
self-certifying: `device_id` is derived from its public key, so an envelope can only
claim the device whose key signed it.
"""

from __future__ import annotations

import hashlib

__all__ = ["device_id_for", "key_fingerprint"]


def key_fingerprint(public_key: bytes) -> str:
    """SHA-256 of the raw public key bytes, lowercase hex (64 characters)."""
    return hashlib.sha256(public_key).hexdigest()


def device_id_for(public_key: bytes) -> str:
    """The device id a software key may claim: ``dev-`` and 32 hex digits of its fingerprint."""
    return "dev-" + key_fingerprint(public_key)[:32]
