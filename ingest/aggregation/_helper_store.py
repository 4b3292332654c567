"""The helper's own state: seen report ids, answered jobs, batch aggregates. SQLite.

One transaction per job stores its answer, its report ids and the batch's new aggregate
share together, so a job is counted exactly once: a crash before the commit leaves no
trace (the leader retries the job), and a retry after it finds the stored answer.
A collection stores the noisy share once; asked again, the helper returns it, never
fresh noise. WAL and ``synchronous=FULL``: a commit is durable when it returns.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from ingest._sqlite import open_durable
from ingest.aggregation._batches import BatchKey

__all__ = ["HelperBatch", "HelperStore", "StoredJob"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS seen_reports (
    task      TEXT NOT NULL,
    report_id BLOB NOT NULL,
    job_id    TEXT NOT NULL,
    PRIMARY KEY (task, report_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS jobs (
    job_id         TEXT PRIMARY KEY,
    request_digest TEXT NOT NULL,
    response       TEXT NOT NULL,
    created_at     REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    policy_hash     TEXT NOT NULL,
    task            TEXT NOT NULL,
    region          TEXT NOT NULL,
    batch_start     TEXT NOT NULL,
    aggregate_share BLOB NOT NULL,
    reports         INTEGER NOT NULL,
    checksum        BLOB NOT NULL,
    noisy_share     BLOB,
    noise_scale     REAL,
    collected_at    REAL,
    PRIMARY KEY (policy_hash, task, region, batch_start)
);
"""

_CHUNK = 500  # report ids per IN (...) query, well under SQLite's variable limit


@dataclass(frozen=True, slots=True)
class HelperBatch:
    """A batch as the helper keeps it; `noisy_share` is set once it was collected."""

    aggregate_share: bytes
    reports: int
    checksum: bytes
    noisy_share: bytes | None = None
    noise_scale: float | None = None

    @property
    def collected(self) -> bool:
        """True once the noisy share was drawn and stored (the batch is closed)."""
        return self.noisy_share is not None


@dataclass(frozen=True, slots=True)
class StoredJob:
    """An answered job: the digest of its request and the answer (JSON)."""

    request_digest: str
    response: str


def _key_args(key: BatchKey) -> tuple[str, str, str, str]:
    return (key.policy_hash, key.task, key.region, _iso(key.batch_start))


def _iso(at: datetime) -> str:
    return at.isoformat()


class HelperStore:
    """The helper's SQLite state file. Thread-safe (one lock, short transactions)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db = open_durable(self.path, _SCHEMA)

    def close(self) -> None:
        """Close the database; safe to call twice."""
        with self._lock:
            self._db.close()

    def job(self, job_id: str) -> StoredJob | None:
        """The stored answer of `job_id`, if it was answered."""
        with self._lock:
            row = self._db.execute(
                "SELECT request_digest, response FROM jobs WHERE job_id = ?", [job_id]
            ).fetchone()
        return None if row is None else StoredJob(str(row[0]), str(row[1]))

    def seen(self, task: str, report_ids: Sequence[bytes]) -> set[bytes]:
        """Which of `report_ids` were already seen for `task`."""
        found: set[bytes] = set()
        with self._lock:
            for i in range(0, len(report_ids), _CHUNK):
                chunk = report_ids[i : i + _CHUNK]
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(
                    f"SELECT report_id FROM seen_reports WHERE task = ? AND report_id IN ({marks})",
                    [task, *chunk],
                ).fetchall()
                found.update(bytes(r[0]) for r in rows)
        return found

    def batch(self, key: BatchKey) -> HelperBatch | None:
        """The batch's aggregate so far, or None if no report of it was aggregated."""
        with self._lock:
            row = self._db.execute(
                "SELECT aggregate_share, reports, checksum, noisy_share, noise_scale "
                "FROM batches WHERE policy_hash = ? AND task = ? AND region = ? "
                "AND batch_start = ?",
                _key_args(key),
            ).fetchone()
        if row is None:
            return None
        noisy = None if row[3] is None else bytes(row[3])
        return HelperBatch(bytes(row[0]), int(row[1]), bytes(row[2]), noisy, row[4])

    def commit_job(
        self,
        job_id: str,
        request_digest: str,
        response: str,
        key: BatchKey,
        report_ids: Iterable[bytes],
        batch: HelperBatch,
    ) -> None:
        """Store a job's answer, its report ids and the batch's new aggregate, atomically."""
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT INTO jobs VALUES (?, ?, ?, ?)",
                [job_id, request_digest, response, time.time()],
            )
            self._db.executemany(
                "INSERT INTO seen_reports VALUES (?, ?, ?)",
                [(key.task, rid, job_id) for rid in report_ids],
            )
            self._db.execute(
                "INSERT INTO batches (policy_hash, task, region, batch_start, aggregate_share, "
                "reports, checksum) VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (policy_hash, task, region, batch_start) DO UPDATE SET "
                "aggregate_share = excluded.aggregate_share, reports = excluded.reports, "
                "checksum = excluded.checksum WHERE batches.noisy_share IS NULL",
                [*_key_args(key), batch.aggregate_share, batch.reports, batch.checksum],
            )

    def commit_collection(self, key: BatchKey, noisy_share: bytes, noise_scale: float) -> bool:
        """Store the batch's noisy share unless one is stored; True if this one was."""
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            cur = self._db.execute(
                "UPDATE batches SET noisy_share = ?, noise_scale = ?, collected_at = ? "
                "WHERE policy_hash = ? AND task = ? AND region = ? AND batch_start = ? "
                "AND noisy_share IS NULL",
                [noisy_share, noise_scale, time.time(), *_key_args(key)],
            )
            return cur.rowcount == 1
