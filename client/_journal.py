"""The ledger's files: MAC'd journal lines, atomic replacement, an exclusive lock.

A journal line is `<mac> <json>\\n`, the MAC a keyed BLAKE2b-128 of the JSON bytes
(`LineFraming`). Without a key the MAC is a plain checksum: it catches a torn or flipped
line, not a deliberate edit.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["APPEND_FLAGS", "LineFraming", "lock_exclusively", "write_atomically"]

# Windows opens low-level files in text mode unless told otherwise; MACs need bytes.
APPEND_FLAGS = os.O_WRONLY | os.O_APPEND | getattr(os, "O_BINARY", 0)
_UNKEYED = b"quietwire-ledger-unkeyed"
_MAC_HEX = 32


class LineFraming:
    """`<mac> <json>\\n` lines, the MAC keyed BLAKE2b-128 of the JSON bytes."""

    def __init__(self, key: bytes | None) -> None:
        self._key = hashlib.blake2b(key or _UNKEYED, digest_size=32, person=b"qw-ledger").digest()

    def _mac(self, payload: bytes) -> bytes:
        return hashlib.blake2b(payload, key=self._key, digest_size=16).hexdigest().encode()

    def frame(self, record: dict[str, Any]) -> bytes:
        """One line for `record` (canonical JSON: sorted keys, no spaces)."""
        payload = json.dumps(record, separators=(",", ":"), sort_keys=True).encode()
        return b"%s %s\n" % (self._mac(payload), payload)

    def unframe(self, line: bytes) -> dict[str, Any] | None:
        """The record in one line, or None if it fails its MAC or does not parse."""
        mac, sep, payload = line.partition(b" ")
        if not sep or len(mac) != _MAC_HEX or not hmac.compare_digest(mac, self._mac(payload)):
            return None
        try:
            record = json.loads(payload)
        except ValueError:
            return None
        return record if isinstance(record, dict) else None


def _fsync_dir(directory: Path) -> None:
    # A rename is durable only once its directory is; Windows has no directory fsync.
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so a crash leaves the old or the new file, never a mix."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def lock_exclusively(fd: int) -> bool:
    """Take an exclusive, non-blocking advisory lock on `fd`; False if held elsewhere."""
    if sys.platform == "win32":
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True
