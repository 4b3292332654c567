"""The region's ingest key: a NaCl Curve25519 private key in a 0600 file.

File format: the raw 32-byte private key, base64 (standard alphabet), one line.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
from pathlib import Path

from nacl.public import PrivateKey

from ingest._errors import ConfigurationError
from ingest._settings import IngestSettings

__all__ = ["load_ingest_key", "read_private_key", "write_private_key"]


def write_private_key(path: Path, key: PrivateKey | None = None) -> PrivateKey:
    """Write `key` (or a fresh one) to a new file created 0600; refuses to overwrite."""
    key = key or PrivateKey.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    text = base64.b64encode(bytes(key)).decode("ascii") + "\n"
    try:
        # O_EXCL and the mode at creation: the key is never readable by others, not even
        # for the instant between create and chmod.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise ConfigurationError(f"{path}: a key file already exists; not overwriting") from exc
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(text)
    return key


def read_private_key(path: Path) -> PrivateKey:
    """Read a key file, refusing one that group or others may read."""
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"{path}: cannot read the ingest key: {exc}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigurationError(
            f"{path}: the ingest key is accessible to group/others "
            f"(mode {stat.S_IMODE(mode):04o}); chmod 600 it"
        )
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except binascii.Error as exc:
        raise ConfigurationError(f"{path}: the ingest key is not base64") from exc
    if len(raw) != PrivateKey.SIZE:
        raise ConfigurationError(
            f"{path}: the ingest key must be {PrivateKey.SIZE} bytes, found {len(raw)}"
        )
    return PrivateKey(raw)


def load_ingest_key(settings: IngestSettings) -> PrivateKey:
    """The configured key; in development only, generate one into the state dir if absent."""
    path = settings.key_path
    if settings.private_key_path is None and not path.exists():
        if settings.environment != "development":
            raise ConfigurationError("refusing to generate an ingest key outside development")
        return write_private_key(path)
    return read_private_key(path)
