"""Group commit for the audit log: concurrent requests' entries share one transaction.

Every envelope request appends its decisions before it is answered, and each
`AuditLog.append_many` is a transaction with its own fsync. Under concurrent requests
that fsync (and the worker-thread hop around it) would be paid per request and the
requests would queue on the log's lock one by one. `GroupedAudit.append` instead queues
the records; one writer task appends everything queued while the previous transaction
ran, in arrival order (each call's records stay together and in order), in one
`append_many`. A call returns only once its records are committed, so an answer still
follows its audit entries to disk.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from auditlog import AuditLog, AuditRecord

__all__ = ["GroupedAudit"]


class GroupedAudit:
    """Appends to `audit` from the event loop, one transaction per group of callers."""

    def __init__(self, audit: AuditLog) -> None:
        self.audit = audit
        self._waiting: list[tuple[Sequence[AuditRecord], asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def append(self, records: Sequence[AuditRecord]) -> None:
        """Append `records` durably (in one transaction with other callers' records)."""
        if not records:
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # Its caller may be gone (client disconnect) by the time it fails: observe it.
        done.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._waiting.append((records, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_waiting())
        # Shielded: a client that disconnects must not cancel a commit others wait on.
        await asyncio.shield(done)

    async def _write_waiting(self) -> None:
        while self._waiting:
            group, self._waiting = self._waiting, []
            records = [r for batch, _ in group for r in batch]
            try:
                await asyncio.to_thread(self.audit.append_many, records)
            except Exception as exc:
                # Every waiter hears of it, rather than waiting forever.
                for _, done in group:
                    if not done.done():
                        done.set_exception(exc)
                continue
            for _, done in group:
                if not done.done():
                    done.set_result(None)
