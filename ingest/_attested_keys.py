"""The per-envelope view of attestation: which TPM keys are currently attested.

`AttestedKeys.lookup(point)` answers from memory; a miss (or an entry older than
`ttl` seconds) reads the `DeviceRegistry` once. Attestation and revocation on this
replica invalidate the key's entry at once, so a revocation takes effect on the next
envelope here; other replicas see it within `ttl` (their entries age out). The cached
`cryptography` key object also saves re-validating the curve point per envelope.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec

from ingest._registry import DeviceRegistry
from schemas import key_fingerprint

__all__ = ["AttestedKey", "AttestedKeys"]


@dataclass(frozen=True, slots=True)
class AttestedKey:
    """A signing key some device attested, and that device's current standing."""

    device_id: str
    public_key: ec.EllipticCurvePublicKey
    expires_at: float
    """Unix seconds after which the device must re-attest."""
    revoked: bool


@dataclass(frozen=True, slots=True)
class _Cached:
    key: AttestedKey | None
    loaded_at: float


class AttestedKeys:
    """An in-memory cache in front of the registry, keyed by key fingerprint. Thread-safe."""

    def __init__(
        self,
        registry: DeviceRegistry,
        *,
        ttl: float = 5.0,
        max_size: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._registry = registry
        self._ttl = ttl
        self._max = max_size
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _Cached] = OrderedDict()

    def lookup(self, public_key: bytes) -> AttestedKey | None:
        """The attested key with this uncompressed point, or None if none is attested."""
        fingerprint = key_fingerprint(public_key)
        now = self._clock()
        with self._lock:
            cached = self._entries.get(fingerprint)
            if cached is not None and now - cached.loaded_at < self._ttl:
                return cached.key
        key = self._load(fingerprint, public_key)
        with self._lock:
            self._entries[fingerprint] = _Cached(key, now)
            self._entries.move_to_end(fingerprint)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)
        return key

    def invalidate(self, *fingerprints: str | None) -> None:
        """Forget these keys' entries (after an attestation or a revocation)."""
        with self._lock:
            for fingerprint in fingerprints:
                if fingerprint is not None:
                    self._entries.pop(fingerprint, None)

    def _load(self, fingerprint: str, public_key: bytes) -> AttestedKey | None:
        record = self._registry.by_signing_key(fingerprint)
        if record is None or record.signing_key != public_key:
            return None
        if record.attestation_expires_at is None:
            return None
        try:
            point = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), public_key)
        except ValueError:
            return None
        return AttestedKey(
            device_id=record.device_id,
            public_key=point,
            expires_at=record.attestation_expires_at,
            revoked=record.revoked,
        )
