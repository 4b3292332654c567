"""The deletion request a revocation sends: built at once, signed when it is sent.

`revoke_consent` runs on the host app's thread, and signing may wait on a TPM (or on
its attestation), so the request is queued unsigned (`deletion_request`) and the
sending thread signs it (`sign_deletion`) with the key in use then, whose device id it
carries.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from client._keys import KeyStore
from client._keystore_fallback import FallbackKeyStore, device_id_of, signed_fields
from schemas import DeletionRequestV1, SignedDeletionRequest, Tier

__all__ = ["deletion_request", "sign_deletion"]


def deletion_request(
    device_id: str,
    *,
    region: str,
    tier: Tier,
    requested_at: datetime,
    consent_hash: str,
    consent_version: int,
) -> DeletionRequestV1:
    """A fresh, unsigned deletion request for `tier` (pure)."""
    return DeletionRequestV1(
        request_id=uuid.uuid4(),
        device_id=device_id,
        region=region,
        tier=tier,
        requested_at=requested_at,
        consent_hash=consent_hash,
        consent_version=consent_version,
    )


def sign_deletion(key_store: KeyStore, request: DeletionRequestV1) -> SignedDeletionRequest:
    """`request` signed by the key that signs envelopes now, stamped with its device id."""
    # A fallback store may have switched to software since the request was built.
    store = key_store.signing_store() if isinstance(key_store, FallbackKeyStore) else key_store
    stamped = request.model_copy(update={"device_id": device_id_of(store)})
    return SignedDeletionRequest(**signed_fields(store, stamped.model_dump_json().encode()))
