"""The ingest's keys, each a 0600 file: the region's ingest key (a NaCl Curve25519
private key, devices seal to it) and the audit key (Ed25519, signs the audit log's
checkpoints; auditors verify with its public half, ``GET /v1/audit-key``).

File format: the raw 32-byte private key (the Ed25519 seed), base64 (standard
alphabet), one line.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
from pathlib import Path

from nacl.public import PrivateKey
from nacl.signing import SigningKey

from ingest._errors import ConfigurationError
from ingest._settings import IngestSettings

__all__ = [
    "load_audit_key",
    "load_ingest_key",
    "read_audit_key",
    "read_private_key",
    "write_audit_key",
    "write_private_key",
]


def write_private_key(path: Path, key: PrivateKey | None = None) -> PrivateKey:
    """Write `key` (or a fresh one) to a new file created 0600; refuses to overwrite."""
    key = key or PrivateKey.generate()
    _write_secret(path, bytes(key))
    return key


def write_audit_key(path: Path, key: SigningKey | None = None) -> SigningKey:
    """Write the audit key `key` (or a fresh one) like `write_private_key`."""
    key = key or SigningKey.generate()
    _write_secret(path, bytes(key))
    return key


def read_audit_key(path: Path) -> SigningKey:
    """Read an audit key file, refusing one that group or others may read."""
    return SigningKey(_read_secret(path, 32, "audit key"))


def load_audit_key(settings: IngestSettings) -> SigningKey:
    """The audit key; generated into its file on first start (in any environment: its
    public half is what auditors pin, so a new key is visible to them, not hidden)."""
    path = settings.resolved_audit_key_path
    if settings.audit_key_path is None and not path.exists():
        return write_audit_key(path)
    return read_audit_key(path)


def _write_secret(path: Path, raw: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = base64.b64encode(raw).decode("ascii") + "\n"
    try:
        # O_EXCL and the mode at creation: the key is never readable by others, not even
        # for the instant between create and chmod.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        if path.is_dir():
            raise ConfigurationError(
                f"{path} is a directory; give the path of the key file to create"
            ) from exc
        raise ConfigurationError(f"{path}: a key file already exists; not overwriting") from exc
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(text)


def read_private_key(path: Path, what: str = "ingest key") -> PrivateKey:
    """Read a key file, refusing one that group or others may read; `what` names the
    key in errors (the helper reads its own key with this too)."""
    return PrivateKey(_read_secret(path, PrivateKey.SIZE, what))


def _read_secret(path: Path, size: int, what: str) -> bytes:
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"{path}: cannot read the {what}: {exc}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigurationError(
            f"{path}: the {what} is accessible to group/others "
            f"(mode {stat.S_IMODE(mode):04o}); chmod 600 it"
        )
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except binascii.Error as exc:
        raise ConfigurationError(f"{path}: the {what} is not base64") from exc
    if len(raw) != size:
        raise ConfigurationError(f"{path}: the {what} must be {size} bytes, found {len(raw)}")
    return raw


def load_ingest_key(settings: IngestSettings) -> PrivateKey:
    """The configured key; in development only, generate one into the state dir if absent."""
    path = settings.key_path
    if settings.private_key_path is None and not path.exists():
        if settings.environment != "development":
            raise ConfigurationError("refusing to generate an ingest key outside development")
        return write_private_key(path)
    return read_private_key(path)
