"""Durable enrollment and attestation state of TPM devices: the `DeviceRegistry` seam.

One row per device (named by its EK, see `schemas.tpm_device_id_for`): the EK
certificate fingerprint, the AK public area and name, the enrollment status and its
pending challenge, the attested signing key and its expiry, the last TPM clock the
device quoted (so a clock going back is caught across restarts) and the revocation.

`SqliteDeviceRegistry` keeps it in one SQLite file (stdlib `sqlite3`, WAL,
``synchronous=FULL``: a committed enrollment survives a crash). Writes are serialized
by one lock and fsync before they return. Reads (the envelope path's key lookups, on
the event loop for small batches) use a second connection under their own lock: in WAL
mode a reader never waits for a writer, so a lookup never sits behind an fsync.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

__all__ = ["DeviceRecord", "DeviceRegistry", "EnrollmentStatus", "SqliteDeviceRegistry"]

EnrollmentStatus = Literal["pending", "enrolled"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    device_id            TEXT PRIMARY KEY,
    ek_fingerprint       TEXT NOT NULL,
    ek_public            BLOB NOT NULL,
    ak_public            BLOB NOT NULL,
    ak_name              BLOB NOT NULL,
    status               TEXT NOT NULL CHECK (status IN ('pending', 'enrolled')),
    challenge            BLOB,
    challenge_expires_at REAL,
    enrolled_at          REAL,
    signing_key          BLOB,
    signing_key_fp       TEXT,
    attested_at          REAL,
    attestation_expires_at REAL,
    tpm_reset_count      INTEGER,
    tpm_restart_count    INTEGER,
    tpm_clock            INTEGER,
    revoked              INTEGER NOT NULL DEFAULT 0,
    revoked_at           REAL,
    revoked_reason       TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS devices_signing_key ON devices (signing_key_fp);
"""


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    """One device's registry row. Times are Unix seconds."""

    device_id: str
    ek_fingerprint: str
    ek_public: bytes
    ak_public: bytes
    ak_name: bytes
    status: EnrollmentStatus
    challenge: bytes | None
    challenge_expires_at: float | None
    enrolled_at: float | None
    signing_key: bytes | None
    signing_key_fp: str | None
    attested_at: float | None
    attestation_expires_at: float | None
    tpm_reset_count: int | None
    tpm_restart_count: int | None
    tpm_clock: int | None
    revoked: bool
    revoked_at: float | None
    revoked_reason: str | None


class DeviceRegistry(Protocol):
    """Where enrollment and attestation state lives; must survive an ingest restart."""

    def get(self, device_id: str) -> DeviceRecord | None:
        """The device's row, if it ever started enrolling."""
        ...

    def by_signing_key(self, fingerprint: str) -> DeviceRecord | None:
        """The device whose currently attested signing key has this fingerprint."""
        ...

    def begin_enrollment(
        self,
        *,
        device_id: str,
        ek_fingerprint: str,
        ek_public: bytes,
        ak_public: bytes,
        ak_name: bytes,
        challenge: bytes,
        challenge_expires_at: float,
    ) -> None:
        """Record a (re-)enrollment with a fresh AK as pending; forgets any attested key.

        The last TPM clock is kept: it belongs to the TPM (the EK), not to the AK.
        """
        ...

    def complete_enrollment(self, device_id: str, *, now: float) -> None:
        """Mark the pending enrollment done and drop its challenge."""
        ...

    def record_attestation(
        self,
        device_id: str,
        *,
        signing_key: bytes,
        signing_key_fp: str,
        now: float,
        expires_at: float,
        reset_count: int,
        restart_count: int,
        clock: int,
    ) -> None:
        """Store the newly attested signing key, its expiry and the quoted TPM clock."""
        ...

    def revoke(self, device_id: str, *, reason: str, now: float) -> bool:
        """Revoke the device; False if it is unknown."""
        ...


class SqliteDeviceRegistry:
    """`DeviceRegistry` in a SQLite file (created on first use)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._read_lock = threading.Lock()
        self._reader = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._reader.row_factory = sqlite3.Row

    def close(self) -> None:
        """Close the database; safe to call twice."""
        with self._lock:
            self._db.close()
        with self._read_lock:
            self._reader.close()

    def get(self, device_id: str) -> DeviceRecord | None:
        """The device's row, if any."""
        return self._one("SELECT * FROM devices WHERE device_id = ?", (device_id,))

    def by_signing_key(self, fingerprint: str) -> DeviceRecord | None:
        """The device whose attested signing key has this fingerprint, if any."""
        return self._one("SELECT * FROM devices WHERE signing_key_fp = ?", (fingerprint,))

    def begin_enrollment(
        self,
        *,
        device_id: str,
        ek_fingerprint: str,
        ek_public: bytes,
        ak_public: bytes,
        ak_name: bytes,
        challenge: bytes,
        challenge_expires_at: float,
    ) -> None:
        """Insert or reset the row to pending with the new AK (revocation is kept)."""
        self._write(
            """
            INSERT INTO devices (device_id, ek_fingerprint, ek_public, ak_public, ak_name,
                                 status, challenge, challenge_expires_at)
            VALUES (?, ?, ?, ?, ?, 'pending', ?, ?)
            ON CONFLICT (device_id) DO UPDATE SET
                ek_fingerprint = excluded.ek_fingerprint, ek_public = excluded.ek_public,
                ak_public = excluded.ak_public, ak_name = excluded.ak_name,
                status = 'pending', challenge = excluded.challenge,
                challenge_expires_at = excluded.challenge_expires_at,
                signing_key = NULL, signing_key_fp = NULL, attested_at = NULL,
                attestation_expires_at = NULL
            """,
            (
                device_id,
                ek_fingerprint,
                ek_public,
                ak_public,
                ak_name,
                challenge,
                challenge_expires_at,
            ),
        )

    def complete_enrollment(self, device_id: str, *, now: float) -> None:
        """Mark enrolled and forget the challenge (a proof is accepted once)."""
        self._write(
            "UPDATE devices SET status = 'enrolled', challenge = NULL, "
            "challenge_expires_at = NULL, enrolled_at = ? WHERE device_id = ?",
            (now, device_id),
        )

    def record_attestation(
        self,
        device_id: str,
        *,
        signing_key: bytes,
        signing_key_fp: str,
        now: float,
        expires_at: float,
        reset_count: int,
        restart_count: int,
        clock: int,
    ) -> None:
        """Store the attested key; another device's claim on the same key is cleared."""
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            # A key lives in one TPM; a stale claim (an old row) must not shadow it.
            self._db.execute(
                "UPDATE devices SET signing_key = NULL, signing_key_fp = NULL "
                "WHERE signing_key_fp = ? AND device_id != ?",
                (signing_key_fp, device_id),
            )
            self._db.execute(
                """
                UPDATE devices SET signing_key = ?, signing_key_fp = ?, attested_at = ?,
                    attestation_expires_at = ?, tpm_reset_count = ?, tpm_restart_count = ?,
                    tpm_clock = ?
                WHERE device_id = ?
                """,
                (
                    signing_key,
                    signing_key_fp,
                    now,
                    expires_at,
                    reset_count,
                    restart_count,
                    clock,
                    device_id,
                ),
            )

    def revoke(self, device_id: str, *, reason: str, now: float) -> bool:
        """Set the revoked flag; True if the device exists."""
        with self._lock:
            cursor = self._db.execute(
                "UPDATE devices SET revoked = 1, revoked_at = ?, revoked_reason = ? "
                "WHERE device_id = ?",
                (now, reason, device_id),
            )
            return cursor.rowcount > 0

    def _one(self, sql: str, args: tuple[object, ...]) -> DeviceRecord | None:
        # Autocommit: each read sees every write committed before it.
        with self._read_lock:
            row = self._reader.execute(sql, args).fetchone()
        if row is None:
            return None
        values = dict(row)
        values["revoked"] = bool(values["revoked"])
        return DeviceRecord(**values)

    def _write(self, sql: str, args: tuple[object, ...]) -> None:
        with self._lock:
            self._db.execute(sql, args)
