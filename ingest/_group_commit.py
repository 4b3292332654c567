"""Group commit: callers that arrive while a commit is in flight share the next one.

The ingest's durable writes (the device ledger's transaction, the audit log's append,
the embedded outbox and sink) each cost about the same whatever they hold: an fsync'd
SQLite commit is about 200 µs of CPU, a DuckDB transaction milliseconds. `GroupCommit`
queues each caller's entry; one writer task hands everything queued while the previous
commit ran to `commit` in one call, in arrival order, in a worker thread (it blocks).
Each caller is answered with its own result once that call has returned, so an answer
still follows its data to disk. A failure reaches every caller of the group, as
`error(exc)` (a fresh exception per caller: one raised in several tasks would collect
their tracebacks), and the next group is tried as usual.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["GroupCommit"]

E = TypeVar("E")
R = TypeVar("R")


def _same(exc: Exception) -> BaseException:
    return exc


class GroupCommit(Generic[E, R]):
    """See the module docstring. Used from one event loop."""

    def __init__(
        self,
        commit: Callable[[list[E]], Sequence[R]],
        *,
        error: Callable[[Exception], BaseException] = _same,
        then: Callable[[list[E], Sequence[R]], None] | None = None,
    ) -> None:
        """`commit(entries)` (blocking) returns one result per entry. `then(entries,
        results)` runs on the event loop after a commit, before any caller is
        answered: bookkeeping that must happen even if every caller has gone."""
        self._commit = commit
        self._error = error
        self._then = then
        self._waiting: list[tuple[E, asyncio.Future[R]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def submit(self, entry: E) -> R:
        """Commit `entry` with whatever else is waiting; its result once durable."""
        done: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        # Its caller may be gone (client disconnect) by the time it fails: observe it.
        done.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._waiting.append((entry, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_waiting())
        # Shielded: a caller that disconnects must not cancel a commit others wait on.
        return await asyncio.shield(done)

    async def idle(self) -> None:
        """Wait until nothing is waiting or being committed (at shutdown)."""
        if self._writer is not None:
            await self._writer

    async def _write_waiting(self) -> None:
        while self._waiting:
            group, self._waiting = self._waiting, []
            entries = [entry for entry, _ in group]
            try:
                results = await asyncio.to_thread(self._commit, entries)
                if self._then is not None:
                    self._then(entries, results)
            except Exception as exc:
                # Whatever it is (a bug too), every caller hears of it: none may hang.
                for _, done in group:
                    if not done.done():
                        done.set_exception(self._error(exc))
                continue
            for (_, done), result in zip(group, results, strict=True):
                if not done.done():
                    done.set_result(result)
