"""In-memory versions of the TPM seams for unit tests: a P-256 key store that says it
is a TPM's (`KeyStore`), and an attestor whose answers a test sets (`Attestor`).

Both can be made slow (`delay` seconds per call), standing for a discrete TPM that
takes its time and an ingest far away. The integration tests use the real ones
(swtpm, `DeviceAttestor` against the real ingest).
"""

from __future__ import annotations

import threading
import time
from typing import Literal

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from schemas import tpm_device_id_for


class MemoryTpmKeyStore:
    """An ECDSA P-256 key in memory, with `tpm` assurance and an EK-style device id."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.signatures = 0
        self._key = ec.generate_private_key(ec.SECP256R1())
        ek = ec.generate_private_key(ec.SECP256R1()).public_key()
        self.device_id = tpm_device_id_for(
            ek.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    @property
    def assurance(self) -> Literal["software", "tpm"]:
        return "tpm"

    def public_key(self) -> bytes:
        return self._key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )

    def sign(self, data: bytes) -> bytes:
        time.sleep(self.delay)
        self.signatures += 1
        return self._key.sign(data, ec.ECDSA(hashes.SHA256()))


class ScriptedAttestor:
    """Answers `ensure_attested` with `succeeds`, after `delay` seconds; thread-safe."""

    def __init__(self, *, succeeds: bool, error: str = "unknown_ek_root", delay: float = 0.0):
        self.succeeds = succeeds
        self.error = error
        self.delay = delay
        self.calls = 0
        self.last_error: str | None = None
        self._attested = False
        self._lock = threading.Lock()

    def ensure_attested(self) -> bool:
        time.sleep(self.delay)
        with self._lock:
            self.calls += 1
            self._attested = self.succeeds
            self.last_error = None if self.succeeds else self.error
            return self._attested

    def is_attested(self) -> bool:
        return self._attested

    def invalidate(self) -> None:
        self._attested = False
