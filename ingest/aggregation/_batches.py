"""Batch identity shared by leader and helper: keys, report checksums, job ids.

A *batch* (DAP's word) is every report of one policy's task, one region and one aligned
window. Both aggregators sum a batch separately; before the helper reveals its share,
the leader proves they summed the same reports with their count and a checksum: the
XOR of SHA-256 of each report id (order-free, so it is kept incrementally).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from ingest.aggregation._wire import CHECKSUM_BYTES

__all__ = ["EMPTY_CHECKSUM", "BatchKey", "batch_checksum", "job_id_for"]

EMPTY_CHECKSUM = bytes(CHECKSUM_BYTES)

_JOB_DOMAIN = b"quietwire/prio3-job/v1\x00"


@dataclass(frozen=True, slots=True, order=True)
class BatchKey:
    """One batch: (policy, task, region, aligned window start)."""

    policy_hash: str
    task: str
    region: str
    batch_start: datetime

    def __post_init__(self) -> None:
        if self.batch_start.tzinfo is None:
            raise ValueError("batch_start must be timezone-aware")
        # Normalised to UTC so keys read back from DuckDB or SQLite compare equal.
        object.__setattr__(self, "batch_start", self.batch_start.astimezone(UTC))

    @property
    def batch_id(self) -> str:
        """A readable id, unique per batch: `region/task/start/policy-prefix`."""
        start = self.batch_start.strftime("%Y-%m-%dT%H:%M:%SZ")
        return f"{self.region}/{self.task}/{start}/{self.policy_hash[:12]}"


def batch_checksum(report_ids: Iterable[bytes], start: bytes = EMPTY_CHECKSUM) -> bytes:
    """`start` XOR SHA-256(id) for each id: extend a batch's checksum by new reports."""
    acc = int.from_bytes(start, "big")
    for rid in report_ids:
        acc ^= int.from_bytes(hashlib.sha256(rid).digest(), "big")
    return acc.to_bytes(CHECKSUM_BYTES, "big")


def job_id_for(key: BatchKey, report_ids: Iterable[bytes]) -> str:
    """Deterministic job id (32 hex digits) of a batch's set of reports."""
    h = hashlib.sha256(_JOB_DOMAIN)
    for part in (key.policy_hash, key.task, key.region, key.batch_start.isoformat()):
        h.update(part.encode() + b"\x00")
    for rid in sorted(report_ids):
        h.update(rid)
    return h.hexdigest()[:32]
