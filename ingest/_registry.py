"""Durable enrollment and attestation state of TPM devices: the `DeviceRegistry` seam.

Two tables. `enrollments` holds at most one *pending* credential challenge per device
(named by its EK, see `schemas.tpm_device_id_for`): the EK and the AK the requester
presented and the secret the challenge hides. Asking to enroll writes only there, so a
requester who holds a device's (public) EK certificate but not its TPM changes nothing
about the device. `devices` holds what a proof established: one row per device that
answered its challenge (the EK certificate fingerprint, the AK public area and name,
the attested signing key and its expiry, the last TPM clock the device quoted, so a
clock going back is caught across restarts, and the revocation).

`activate` moves a pending enrollment into `devices` as a compare-and-swap: it succeeds
only while the stored challenge is still the one whose answer the caller verified, so a
concurrent re-enroll (a newer challenge) makes the older proof lose, never mix with it.
An enrolled device's registration stays as it was until a new activation succeeds.

`SqliteDeviceRegistry` keeps it in one SQLite file (stdlib `sqlite3`, WAL,
``synchronous=FULL``: a committed enrollment survives a crash). Writes are serialized
by one lock and fsync before they return. Reads (the envelope path's key lookups, on
the event loop for small batches) use a second connection under their own lock: in WAL
mode a reader never waits for a writer, so a lookup never sits behind an fsync.

The `devices` columns `status`, `challenge` and `challenge_expires_at` are what an
older ingest wrote (it kept the pending challenge in the device's row, before any
proof); a row it left `pending` reads as not enrolled. This ingest writes `enrolled`
rows only and keeps challenges in `enrollments`.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from ingest._sqlite import open_durable

__all__ = [
    "DeviceRecord",
    "DeviceRegistry",
    "EnrollmentStatus",
    "PendingEnrollment",
    "SqliteDeviceRegistry",
]

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
CREATE TABLE IF NOT EXISTS enrollments (
    device_id      TEXT PRIMARY KEY,
    ek_fingerprint TEXT NOT NULL,
    ek_public      BLOB NOT NULL,
    ak_public      BLOB NOT NULL,
    ak_name        BLOB NOT NULL,
    challenge      BLOB NOT NULL,
    expires_at     REAL NOT NULL
);
"""

_DEVICE_COLUMNS = (
    "device_id, ek_fingerprint, ek_public, ak_public, ak_name, status, enrolled_at, "
    "signing_key, signing_key_fp, attested_at, attestation_expires_at, tpm_reset_count, "
    "tpm_restart_count, tpm_clock, revoked, revoked_at, revoked_reason"
)


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    """One device's registry row. Times are Unix seconds."""

    device_id: str
    ek_fingerprint: str
    ek_public: bytes
    ak_public: bytes
    ak_name: bytes
    status: EnrollmentStatus
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


@dataclass(frozen=True, slots=True)
class PendingEnrollment:
    """A credential challenge issued to whoever asked to enroll a device: nothing is
    known about the requester until it answers."""

    device_id: str
    ek_fingerprint: str
    ek_public: bytes
    ak_public: bytes
    ak_name: bytes
    challenge: bytes
    """The secret MakeCredential hid; the ActivateCredential answer must equal it."""
    expires_at: float


class DeviceRegistry(Protocol):
    """Where enrollment and attestation state lives; must survive an ingest restart."""

    def get(self, device_id: str) -> DeviceRecord | None:
        """The device's row, if it ever completed an enrollment."""
        ...

    def by_signing_key(self, fingerprint: str) -> DeviceRecord | None:
        """The device whose currently attested signing key has this fingerprint."""
        ...

    def pending(self, device_id: str) -> PendingEnrollment | None:
        """The device's pending challenge, if one was issued and not yet answered."""
        ...

    def offer_challenge(self, enrollment: PendingEnrollment, *, now: float) -> None:
        """Store `enrollment` as the device's one pending challenge (replacing an older
        one) and drop challenges expired at `now`. The device's row is not touched."""
        ...

    def activate(self, device_id: str, *, challenge: bytes, now: float) -> bool:
        """Register the pending enrollment whose challenge is `challenge`, atomically.

        False, and nothing written, if the device's pending challenge is no longer
        `challenge` (answered already, or replaced by a newer enroll). Otherwise the
        device's row takes the pending EK and AK, `enrolled`; its attested signing key
        is kept if the AK is the same, else forgotten; the last TPM clock and the
        revocation are kept (they belong to the TPM).
        """
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
        self._lock = threading.Lock()
        self._db = open_durable(self.path, _SCHEMA)
        self._db.row_factory = sqlite3.Row
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
        return self._one("device_id = ?", (device_id,))

    def by_signing_key(self, fingerprint: str) -> DeviceRecord | None:
        """The device whose attested signing key has this fingerprint, if any."""
        return self._one("signing_key_fp = ?", (fingerprint,))

    def pending(self, device_id: str) -> PendingEnrollment | None:
        """The device's pending challenge, if any."""
        with self._read_lock:
            row = self._reader.execute(
                "SELECT * FROM enrollments WHERE device_id = ?", (device_id,)
            ).fetchone()
        return None if row is None else PendingEnrollment(**dict(row))

    def offer_challenge(self, enrollment: PendingEnrollment, *, now: float) -> None:
        """Upsert the pending challenge; expired ones go, so the table stays as small as
        the number of enrollments in flight."""
        e = enrollment
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("DELETE FROM enrollments WHERE expires_at <= ?", (now,))
            self._db.execute(
                "INSERT OR REPLACE INTO enrollments VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    e.device_id,
                    e.ek_fingerprint,
                    e.ek_public,
                    e.ak_public,
                    e.ak_name,
                    e.challenge,
                    e.expires_at,
                ),
            )

    def activate(self, device_id: str, *, challenge: bytes, now: float) -> bool:
        """The compare-and-swap: one transaction deletes the pending row only if its
        challenge is `challenge`, and writes the device row only if it did."""
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            rows = self._db.execute(
                "DELETE FROM enrollments WHERE device_id = ? AND challenge = ? RETURNING *",
                (device_id, challenge),
            ).fetchall()
            if not rows:
                return False
            e = PendingEnrollment(**dict(rows[0]))
            self._db.execute(
                """
                INSERT INTO devices (device_id, ek_fingerprint, ek_public, ak_public, ak_name,
                                     status, enrolled_at)
                VALUES (?, ?, ?, ?, ?, 'enrolled', ?)
                ON CONFLICT (device_id) DO UPDATE SET
                    ek_fingerprint = excluded.ek_fingerprint, ek_public = excluded.ek_public,
                    ak_public = excluded.ak_public, status = 'enrolled', challenge = NULL,
                    challenge_expires_at = NULL, enrolled_at = excluded.enrolled_at,
                    -- the AK certified the signing key: the key stays only with that AK
                    signing_key = iif(ak_name = excluded.ak_name, signing_key, NULL),
                    signing_key_fp = iif(ak_name = excluded.ak_name, signing_key_fp, NULL),
                    attested_at = iif(ak_name = excluded.ak_name, attested_at, NULL),
                    attestation_expires_at =
                        iif(ak_name = excluded.ak_name, attestation_expires_at, NULL),
                    ak_name = excluded.ak_name
                """,
                (e.device_id, e.ek_fingerprint, e.ek_public, e.ak_public, e.ak_name, now),
            )
            return True

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

    def _one(self, where: str, args: tuple[object, ...]) -> DeviceRecord | None:
        # Autocommit: each read sees every write committed before it.
        with self._read_lock:
            row = self._reader.execute(
                f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE {where}", args
            ).fetchone()
        if row is None:
            return None
        values = dict(row)
        values["revoked"] = bool(values["revoked"])
        return DeviceRecord(**values)
