"""Single-use server nonces with an expiry, bound to the device they were issued to.

At most `max_per_device` nonces are outstanding per device (a newer one retires the
oldest), so whoever may ask for nonces (anyone naming an enrolled device) cannot grow
the store past that many per enrolled device.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from ingest.attestation._errors import AttestationError, AttestationReason

__all__ = ["NonceStore"]

_NONCE_BYTES: Final = 32


@dataclass
class _Entry:
    device_id: str
    expires_at: float
    used: bool = False


class NonceStore:
    """Issues nonces and consumes each at most once before it expires.

    A used nonce is remembered until its expiry so a replay is reported as
    `nonce_reused` rather than `nonce_unknown`. `clock` (seconds, monotonic by default)
    is injectable so expiry can be tested without waiting. In memory: a nonce lives
    seconds, and an ingest restart only makes outstanding nonces unknown, which is safe.
    """

    def __init__(
        self,
        ttl_seconds: float = 60.0,
        *,
        max_per_device: int = 8,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl_seconds <= 0:
            raise ValueError(f"ttl_seconds must be positive, got {ttl_seconds}")
        if max_per_device < 1:
            raise ValueError(f"max_per_device must be at least 1, got {max_per_device}")
        self._ttl = ttl_seconds
        self._max_per_device = max_per_device
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[bytes, _Entry] = {}
        self._by_device: dict[str, deque[bytes]] = {}

    def issue(self, device_id: str) -> bytes:
        """A fresh random nonce for `device_id`, valid for the store's TTL."""
        nonce = secrets.token_bytes(_NONCE_BYTES)
        now = self._clock()
        with self._lock:
            self._purge(now)
            self._entries[nonce] = _Entry(device_id, now + self._ttl)
            issued = self._by_device.setdefault(device_id, deque())
            issued.append(nonce)
            while len(issued) > self._max_per_device:
                self._entries.pop(issued.popleft(), None)
        return nonce

    def consume(self, device_id: str, nonce: bytes) -> None:
        """Accept `nonce` for `device_id` once; raise the precise reason otherwise."""
        now = self._clock()
        with self._lock:
            entry = self._entries.get(nonce)
            if entry is None or entry.device_id != device_id:
                raise AttestationError(
                    AttestationReason.NONCE_UNKNOWN, "this nonce was not issued to this device"
                )
            if entry.used:
                raise AttestationError(AttestationReason.NONCE_REUSED, "this nonce was used")
            if now >= entry.expires_at:
                # Left for `_purge`, which keeps the per-device index in step.
                raise AttestationError(
                    AttestationReason.NONCE_EXPIRED,
                    f"this nonce expired {now - entry.expires_at:.1f} s ago",
                )
            entry.used = True

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def _purge(self, now: float) -> None:
        # Called on issue so memory stays bounded by the issue rate times two TTLs; an
        # expired nonce is kept one more TTL so a late answer reads `nonce_expired`.
        expired = [n for n, e in self._entries.items() if now >= e.expires_at + self._ttl]
        for nonce in expired:
            device_id = self._entries.pop(nonce).device_id
            issued = self._by_device[device_id]
            issued.remove(nonce)
            if not issued:
                del self._by_device[device_id]
