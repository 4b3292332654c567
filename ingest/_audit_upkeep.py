"""The ingest's periodic audit work: signed checkpoints and sampling summaries.

`AuditCheckpointer` signs the audit log's head with the audit key (see
`auditlog._checkpoints`) every `every_entries` new entries, or every `every_seconds`
when there are any new ones, and at shutdown. `AuditUpkeep` runs it, and writes the
summaries of `SampledAudit`'s ended intervals, from one background task of the app's
lifespan; `close()` does both one last time, before the log is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable

from nacl.signing import SigningKey

from auditlog import AuditLog, Checkpoint, checkpoint_signer
from ingest._audit_sampling import SampledAudit

__all__ = ["AuditCheckpointer", "AuditUpkeep"]

log = logging.getLogger("quietwire.ingest.audit")


class AuditCheckpointer:
    """When to sign the head, and the signing. Thread-safe (the log serializes)."""

    def __init__(
        self,
        audit: AuditLog,
        key: SigningKey,
        *,
        every_entries: int = 1000,
        every_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._audit = audit
        self._sign = checkpoint_signer(key)
        self._every_entries = every_entries
        self._every_seconds = every_seconds
        self._clock = clock
        self._last = clock()

    def maybe_checkpoint(self) -> Checkpoint | None:
        """A checkpoint if `every_entries` entries came since the last one, or any did
        and `every_seconds` passed; else None."""
        now = self._clock()
        timed = now - self._last >= self._every_seconds
        checkpoint = self._audit.append_checkpoint(
            self._sign, min_entries=1 if timed else self._every_entries
        )
        if checkpoint is not None or timed:
            self._last = now
        return checkpoint

    def checkpoint(self) -> Checkpoint | None:
        """A checkpoint now if any entry came since the last one (at start and shutdown)."""
        self._last = self._clock()
        return self._audit.append_checkpoint(self._sign, min_entries=1)


class AuditUpkeep:
    """The background task: every `poll` seconds, summaries due and a checkpoint due."""

    def __init__(
        self, sampled: SampledAudit, checkpointer: AuditCheckpointer, *, poll: float = 1.0
    ) -> None:
        self._sampled = sampled
        self._checkpointer = checkpointer
        self._poll = poll
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Checkpoint what a previous run left unsigned, then run in the background."""
        await asyncio.to_thread(self._checkpointer.checkpoint)
        self._task = asyncio.create_task(self._run(), name="audit-upkeep")

    async def close(self) -> None:
        """Stop the task, then write the last summaries and sign the final head."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await asyncio.to_thread(self._final)

    def _final(self) -> None:
        self._sampled.flush(force=True)
        self._checkpointer.checkpoint()

    def _tick(self) -> None:
        self._sampled.flush()
        self._checkpointer.maybe_checkpoint()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._poll)
            try:
                await asyncio.to_thread(self._tick)
            except sqlite3.Error:  # retried next tick: the task must outlive a busy disk
                log.exception("audit upkeep failed; retrying in %.1f s", self._poll)
