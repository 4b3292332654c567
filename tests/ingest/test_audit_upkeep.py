"""When the ingest signs its audit log's head: every N entries, or after T seconds
with new entries, and at start and shutdown."""

from __future__ import annotations

from pathlib import Path

from nacl.signing import SigningKey

from auditlog import AuditLog, AuditRecord, verify_log
from ingest._audit_sampling import SampledAudit
from ingest._audit_upkeep import AuditCheckpointer, AuditUpkeep

KEY = SigningKey(b"a" * 32)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _append(log: AuditLog, n: int) -> None:
    for _ in range(n):
        log.append(AuditRecord("envelope", "accepted"))


def test_every_n_entries_or_every_t_seconds_with_new_entries(tmp_path: Path) -> None:
    clock = Clock()
    log = AuditLog(tmp_path / "audit.sqlite3")
    checkpointer = AuditCheckpointer(log, KEY, every_entries=3, every_seconds=60.0, clock=clock)
    seqs: list[int | None] = []

    def tick() -> None:
        c = checkpointer.maybe_checkpoint()
        seqs.append(c.seq if c else None)

    tick()  # an empty log's first checkpoint: seq 0
    _append(log, 2)
    tick()  # 2 new entries, 0 s: not yet
    _append(log, 1)
    tick()  # 3 new entries
    _append(log, 1)
    clock.now = 61.0
    tick()  # 1 new entry, but 61 s since the last
    clock.now = 200.0
    tick()  # nothing new: nothing to sign
    report = verify_log(log, KEY.verify_key)
    log.close()

    assert seqs == [0, None, 3, 4, None]
    assert report.ok
    assert report.checkpoints == 3


async def test_shutdown_writes_the_summaries_then_signs_the_final_head(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.sqlite3")
    sampled = SampledAudit(log, interval=3600.0)
    upkeep = AuditUpkeep(sampled, AuditCheckpointer(log, KEY, every_seconds=3600.0))
    await upkeep.start()
    refused = AuditRecord("nonce", "rejected", None, "rate_limited")
    for _ in range(5):
        sampled.append("203.0.113.9", refused)
    await upkeep.close()
    report = verify_log(log, KEY.verify_key)
    checkpoints = log.checkpoints()
    log.close()

    assert report.ok
    assert report.chain.entries == 2  # the first refusal, and the summary of 4 more
    assert report.uncovered == 0
    assert [c.seq for c in checkpoints] == [0, 2]
