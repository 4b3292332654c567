"""Building the signed deletion request a revocation sends (pure, apart from signing)."""

from __future__ import annotations

import uuid
from datetime import datetime
from uuid import UUID

from client._keys import KeyStore
from client._keystore_fallback import FallbackKeyStore, device_id_of, signed_fields
from schemas import DeletionRequestV1, SignedDeletionRequest, Tier

__all__ = ["sign_deletion_request"]


def sign_deletion_request(
    key_store: KeyStore,
    *,
    region: str,
    tier: Tier,
    requested_at: datetime,
    consent_hash: str,
    consent_version: int,
) -> tuple[UUID, SignedDeletionRequest]:
    """A fresh deletion request for `tier`, signed by the device key: (id, signed form)."""
    # The key that signs envelopes now (a fallback store may have switched to software).
    store = key_store.signing_store() if isinstance(key_store, FallbackKeyStore) else key_store
    request = DeletionRequestV1(
        request_id=uuid.uuid4(),
        device_id=device_id_of(store),
        region=region,
        tier=tier,
        requested_at=requested_at,
        consent_hash=consent_hash,
        consent_version=consent_version,
    )
    signed = SignedDeletionRequest(**signed_fields(store, request.model_dump_json().encode()))
    return request.request_id, signed
