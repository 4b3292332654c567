"""Device signing keys behind one seam: software (PyNaCl) now, TPM later.

`SoftwareKeyStore` keeps an Ed25519 seed in a file of the state directory, created
with 0600 permissions on first use. A key file that other users can read is refused:
its key could be used to impersonate the device.
"""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

from nacl.signing import SigningKey

from client._errors import KeyStoreError

__all__ = ["KeyStore", "SoftwareKeyStore"]

_SEED_BYTES = 32


@runtime_checkable
class KeyStore(Protocol):
    """Where the device's envelope-signing key lives."""

    @property
    def assurance(self) -> Literal["software", "tpm"]:
        """How the key is anchored: `software` (a file) or `tpm` (certified by a TPM)."""
        ...

    def public_key(self) -> bytes:
        """The raw 32-byte Ed25519 verify key."""
        ...

    def sign(self, data: bytes) -> bytes:
        """A detached 64-byte Ed25519 signature over `data`."""
        ...


class SoftwareKeyStore:
    """An Ed25519 key in `<state_dir>/device_key.ed25519` (raw seed, mode 0600)."""

    FILE_NAME = "device_key.ed25519"

    def __init__(self, state_dir: Path | str) -> None:
        self.path = Path(state_dir) / self.FILE_NAME
        self._lock = threading.Lock()
        self._key = self._load_or_create()

    @property
    def assurance(self) -> Literal["software", "tpm"]:
        """Always `software`."""
        return "software"

    def public_key(self) -> bytes:
        """The raw 32-byte Ed25519 verify key."""
        return bytes(self._key.verify_key)

    def sign(self, data: bytes) -> bytes:
        """A detached Ed25519 signature over `data`."""
        with self._lock:
            return bytes(self._key.sign(data).signature)

    def _load_or_create(self) -> SigningKey:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                return self._load()
            key = SigningKey.generate()
            with os.fdopen(fd, "wb") as f:
                f.write(bytes(key))
                f.flush()
                os.fsync(f.fileno())
            return key
        except OSError as exc:
            raise KeyStoreError(f"cannot create device key {self.path}: {exc}") from exc

    def _load(self) -> SigningKey:
        mode = stat.S_IMODE(self.path.stat().st_mode)
        if mode & 0o077:
            raise KeyStoreError(
                f"device key {self.path} has mode {mode:o}; it must be readable by its "
                "owner only (chmod 600)"
            )
        seed = self.path.read_bytes()
        if len(seed) != _SEED_BYTES:
            raise KeyStoreError(
                f"device key {self.path} holds {len(seed)} bytes, expected {_SEED_BYTES}"
            )
        return SigningKey(seed)
