"""The hash-chained, tamper-evident audit log of every enrollment, attestation,
revocation and envelope decision.

Each entry holds the hash of the entry before it; its own hash is the SHA-256 of the
canonical JSON (sorted keys, no spaces, UTF-8) of all its fields and that previous hash.
Editing an entry breaks its hash; deleting one breaks the sequence and the next entry's
`prev_hash`. Dropping the *newest* entries leaves a shorter valid chain: to catch that,
an auditor keeps (or the operator publishes) `head()` and checks it later against the
chain (`verify_chain(expected_head=...)`). Whoever controls the file can also edit an
entry and recompute every hash after it; the `checkpoints` table holds the writer's
signatures over earlier heads (`append_checkpoint`), which such a rewrite no longer
matches (`auditlog._checkpoints.verify_log`).

Storage is a SQLite table (WAL, ``synchronous=FULL``: an append is durable when it
returns). Envelope decisions are appended with `append_many`, one transaction per
batch, so the per-envelope path pays no fsync of its own.

An auditor opens the file with ``AuditLog(path, read_only=True)`` (`quietwire audit`):
it is never created nor written then, and a missing or foreign file is an
`AuditLogError`.
"""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from auditlog._errors import AuditLogError

__all__ = [
    "AUDIT_ACTIONS",
    "GENESIS_HASH",
    "AuditDecision",
    "AuditEntry",
    "AuditLog",
    "AuditRecord",
    "ChainReport",
    "Checkpoint",
    "CheckpointSigner",
    "entry_hash",
    "verify_entries",
]

GENESIS_HASH = "0" * 64
"""The `prev_hash` of the first entry."""

AUDIT_ACTIONS: Mapping[str, str] = MappingProxyType(
    {
        "enroll": "a device's enrollment (its TPM's endorsement key checked)",
        "activate": "an enrollment's activation (the credential proven)",
        "nonce": "an attestation nonce issued",
        "attest": "an attestation (a TPM quote checked)",
        "revoke": "a device revoked by the operator",
        "envelope": "an envelope accepted or refused",
        "client_report": "a device's count of what it dropped, carried in an envelope",
        "deletion": "a consent revocation's deletion request",
        "retention": "a retention run deleting values past their tier's retention",
        "prio_report": "a secure-aggregation report the leader refused",
        "aggregation_job": "the leader's aggregation job over a batch",
        "batch_collection": "a batch collected (its noisy aggregate revealed) or refused",
        "helper_job": "the helper's side of an aggregation job",
        "helper_report": "a report the helper refused within a job",
        "helper_collection": "the helper's side of a batch's collection",
    }
)
"""Every action an audit entry records, and what it is a decision on. `AuditRecord`
refuses any other, so this list (which `quietwire audit list --action` checks against)
cannot fall behind what the writers record."""

AuditDecision = Literal["accepted", "rejected", "applied"]
"""`applied`: an operation the operator ran rather than a request decided on (retention)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    seq       INTEGER PRIMARY KEY,
    at        REAL NOT NULL,
    action    TEXT NOT NULL,
    decision  TEXT NOT NULL,
    device_id TEXT,
    reason    TEXT,
    detail    TEXT,
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_device ON audit (device_id, seq);
CREATE TABLE IF NOT EXISTS checkpoints (
    seq       INTEGER PRIMARY KEY,
    head      TEXT NOT NULL,
    at        REAL NOT NULL,
    signature BLOB NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """A decision to append: what was decided, about which device, and why."""

    action: str
    """One of `AUDIT_ACTIONS`."""
    decision: AuditDecision
    device_id: str | None = None
    reason: str | None = None
    """The reason code of a rejection (or information such as `duplicate`)."""
    detail: str | None = None

    def __post_init__(self) -> None:
        if self.action not in AUDIT_ACTIONS:
            raise ValueError(
                f"audit action {self.action!r} is not one of AUDIT_ACTIONS (add it there, "
                "so auditors' tools know it)"
            )


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """An appended entry, as stored."""

    seq: int
    at: float
    action: str
    decision: str
    device_id: str | None
    reason: str | None
    detail: str | None
    prev_hash: str
    hash: str


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A signed statement that the chain's entry `seq` had hash `head` at time `at`
    (`seq` 0 and `GENESIS_HASH`: the log was empty). See `auditlog._checkpoints`."""

    seq: int
    head: str
    at: float
    signature: bytes


CheckpointSigner = Callable[[int, str, float], bytes]
"""Signs (seq, head, at); `auditlog.checkpoint_signer(key)` makes one."""


@dataclass(frozen=True, slots=True)
class ChainReport:
    """The result of `verify_chain`: ok, or the first entry that does not check out."""

    ok: bool
    entries: int
    head: str
    broken_at: int | None = None
    problem: str | None = None


_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
_encode_string = json.encoder.encode_basestring
"""How `_CANONICAL` (ensure_ascii=False) writes a string, quotes included."""
"""The entry's canonical form (what `json.dumps` with these options writes; one encoder
instead of one per entry)."""


def entry_hash(
    seq: int,
    at: float,
    record: AuditRecord | AuditEntry,
    prev_hash: str,
) -> str:
    """SHA-256 (hex) of the entry's canonical JSON, chained to `prev_hash`."""
    canonical = _canonical_fast(seq, at, record, prev_hash)
    if canonical is None:
        canonical = _CANONICAL.encode(
            {
                "seq": seq,
                "at": at,
                "action": record.action,
                "decision": record.decision,
                "device_id": record.device_id,
                "reason": record.reason,
                "detail": record.detail,
                "prev_hash": prev_hash,
            }
        )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _canonical_fast(
    seq: int, at: float, record: AuditRecord | AuditEntry, prev_hash: str
) -> str | None:
    """The same text as `_CANONICAL` writes, for the entry of every append: its keys in
    sorted order, each string through the encoder's own escaping (`encode_basestring`),
    the time as `float.__repr__` and the number as `int.__repr__`, as the encoder writes
    them. About 3 µs less per entry than building and sorting a dict (half the hashing
    of an entry). None when a value is of any other type (a str subclass, a bool, a
    float that is not finite): `_CANONICAL` then writes it (`test_log.py` compares the
    two on generated entries)."""
    action, decision, device, reason, detail = (
        record.action,
        record.decision,
        record.device_id,
        record.reason,
        record.detail,
    )
    if not (
        type(seq) is int
        and type(at) is float
        and math.isfinite(at)
        and type(action) is str
        and type(decision) is str
        and type(prev_hash) is str
        and (device is None or type(device) is str)
        and (reason is None or type(reason) is str)
        and (detail is None or type(detail) is str)
    ):
        return None
    text = _encode_string
    return (
        f'{{"action":{text(action)},"at":{at!r},"decision":{text(decision)},'
        f'"detail":{"null" if detail is None else text(detail)},'
        f'"device_id":{"null" if device is None else text(device)},'
        f'"prev_hash":{text(prev_hash)},"reason":{"null" if reason is None else text(reason)},'
        f'"seq":{seq}}}'
    )


class AuditLog:
    """Append-only audit entries in a SQLite file, chained by hash. Thread-safe."""

    def __init__(
        self,
        path: Path | str,
        *,
        clock: Callable[[], float] = time.time,
        read_only: bool = False,
    ) -> None:
        """Open (creating if needed) the log at `path`; `read_only` opens an existing
        log for an auditor and raises `AuditLogError` if it is not one."""
        self.path = Path(path)
        self.read_only = read_only
        self._clock = clock
        self._lock = threading.Lock()
        if read_only:
            self._db = _open_read_only(self.path)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        self._seq, self._head = self._stored_head()

    def _stored_head(self) -> tuple[int, str]:
        rows = self._read("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
        return (int(rows[0][0]), str(rows[0][1])) if rows else (0, GENESIS_HASH)

    def _read(self, sql: str, args: Sequence[object] = ()) -> list[Any]:
        """Rows of a query; a file SQLite cannot read (damaged, or of another layout) is
        an `AuditLogError` naming it, never an SQLite exception (an auditor's tool
        reports it as bad input, not as a broken chain)."""
        try:
            return self._db.execute(sql, args).fetchall()
        except sqlite3.DatabaseError as exc:
            raise AuditLogError(
                f"{self.path}: cannot be read as an audit log ({exc}): the file is damaged "
                "or not of this version"
            ) from exc

    def close(self) -> None:
        """Close the database; safe to call twice."""
        with self._lock:
            self._db.close()

    def append(self, record: AuditRecord) -> AuditEntry:
        """Append one decision durably; returns the stored entry."""
        return self.append_many([record])[0]

    def append_many(self, records: Sequence[AuditRecord]) -> list[AuditEntry]:
        """Append decisions in one transaction (one fsync), in order."""
        if self.read_only:
            raise AuditLogError(f"{self.path}: opened read-only; nothing may be appended")
        if not records:
            return []
        with self._lock:
            at = self._clock()
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                # Chain onto the stored head, not a cached one: another process (the
                # aggregation job next to the ingest) may have appended since.
                seq, head = self._stored_head()
                entries: list[AuditEntry] = []
                for record in records:
                    seq += 1
                    digest = entry_hash(seq, at, record, head)
                    entries.append(
                        AuditEntry(
                            seq,
                            at,
                            record.action,
                            record.decision,
                            record.device_id,
                            record.reason,
                            record.detail,
                            head,
                            digest,
                        )
                    )
                    head = digest
                self._db.executemany(
                    "INSERT INTO audit VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (
                            e.seq,
                            e.at,
                            e.action,
                            e.decision,
                            e.device_id,
                            e.reason,
                            e.detail,
                            e.prev_hash,
                            e.hash,
                        )
                        for e in entries
                    ],
                )
            # Only after the commit: a failed write must not advance the chain.
            self._seq, self._head = seq, head
            return entries

    def head(self) -> str:
        """The hash of the newest entry (GENESIS_HASH when empty): anchor it elsewhere."""
        with self._lock:
            self._seq, self._head = self._stored_head()
            return self._head

    def append_checkpoint(
        self, sign: CheckpointSigner, *, min_entries: int = 1
    ) -> Checkpoint | None:
        """Sign the stored head and keep the checkpoint, unless fewer than `min_entries`
        entries were appended since the last one (None then). An empty log's first
        checkpoint is seq 0: from then on the log cannot be swapped for another."""
        if self.read_only:
            raise AuditLogError(f"{self.path}: opened read-only; nothing may be appended")
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            seq, head = self._stored_head()
            row = self._db.execute("SELECT max(seq) FROM checkpoints").fetchone()
            last = row[0] if row is not None else None
            if last is not None and seq - int(last) < max(1, min_entries):
                return None
            at = self._clock()
            checkpoint = Checkpoint(seq, head, at, sign(seq, head, at))
            self._db.execute(
                "INSERT INTO checkpoints VALUES (?, ?, ?, ?)",
                (checkpoint.seq, checkpoint.head, checkpoint.at, checkpoint.signature),
            )
            return checkpoint

    def checkpoints(self) -> list[Checkpoint]:
        """Every stored checkpoint, oldest first (none in a log from before them)."""
        with self._lock:
            found = self._read(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'checkpoints'"
            )
            if not found:  # an older log opened read-only: never migrated
                return []
            rows = self._read("SELECT seq, head, at, signature FROM checkpoints ORDER BY seq")
        return [Checkpoint(int(r[0]), str(r[1]), float(r[2]), bytes(r[3])) for r in rows]

    def entries(
        self,
        *,
        device_id: str | None = None,
        action: str | None = None,
        decision: AuditDecision | None = None,
        reason: str | None = None,
        limit: int | None = None,
    ) -> list[AuditEntry]:
        """The auditor's query: entries in order, filtered by device, action, decision."""
        clauses: list[str] = []
        args: list[object] = []
        for column, value in (
            ("device_id", device_id),
            ("action", action),
            ("decision", decision),
            ("reason", reason),
        ):
            if value is not None:
                clauses.append(f"{column} = ?")
                args.append(value)
        sql = f"SELECT {_ENTRY_COLUMNS} FROM audit"
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += " ORDER BY seq"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        with self._lock:
            rows = self._read(sql, args)
        return [AuditEntry(*row) for row in rows]

    def verify_chain(self, *, expected_head: str | None = None) -> ChainReport:
        """Recompute every hash; report the first edited, missing or reordered entry."""
        with self._lock:
            rows = self._read(f"SELECT {_ENTRY_COLUMNS} FROM audit ORDER BY seq")
        return verify_entries((AuditEntry(*r) for r in rows), expected_head=expected_head)


_ENTRY_COLUMNS = "seq, at, action, decision, device_id, reason, detail, prev_hash, hash"
"""An entry's columns in `AuditEntry`'s order."""


def _open_read_only(path: Path) -> sqlite3.Connection:
    if path.is_dir():
        raise AuditLogError(f"{path}: a directory, not an audit log file")
    if path.exists() and not path.is_file():
        raise AuditLogError(f"{path}: not a regular file, so not an audit log")
    if not path.exists():
        raise AuditLogError(f"{path}: no such audit log file")
    # mode=ro: the auditor's tool must not create, migrate or write the file.
    uri = path.absolute().as_uri() + "?mode=ro"
    try:
        db = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
    except sqlite3.Error as exc:
        raise AuditLogError(f"{path}: cannot open: {exc}") from exc
    try:
        found = db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'audit'"
        ).fetchone()
    except sqlite3.DatabaseError as exc:
        db.close()
        raise AuditLogError(f"{path}: not an SQLite database ({exc})") from exc
    if found is None:
        db.close()
        raise AuditLogError(f"{path}: not a Quietwire audit log (no audit table)")
    return db


def verify_entries(
    entries: Iterable[AuditEntry], *, expected_head: str | None = None
) -> ChainReport:
    """Check a sequence of entries as `AuditLog.verify_chain` does (e.g. an export)."""
    head = GENESIS_HASH
    count = 0
    for expected_seq, entry in enumerate(entries, start=1):
        count += 1
        if entry.seq != expected_seq:
            return ChainReport(False, count, head, entry.seq, f"expected seq {expected_seq}")
        if entry.prev_hash != head:
            return ChainReport(
                False, count, head, entry.seq, "prev_hash is not the previous entry's hash"
            )
        if entry_hash(entry.seq, entry.at, entry, entry.prev_hash) != entry.hash:
            return ChainReport(False, count, head, entry.seq, "the entry was altered")
        head = entry.hash
    if expected_head is not None and head != expected_head:
        return ChainReport(False, count, head, None, "the chain does not end at the anchored head")
    return ChainReport(True, count, head)
