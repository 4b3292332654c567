"""Waves: requests that arrive while a wave of commits is in flight form the next wave.

A verified batch still has three commits ahead of it (the device ledger, the bus, the
audit log), each of which groups the requests that reach it together. Left to flow
freely, concurrent requests spread out over the three stages and each group is small,
so every request pays most of a transaction (a DuckDB commit costs milliseconds of
CPU). `Waves.run` lets one wave through at a time: the requests that arrived while the
previous wave was committing start together, so each stage commits them in one
transaction. A request waits at most for the wave in flight; nothing is skipped or
reordered within a device (a device's requests are sequential anyway: it sends the next
after the answer).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

__all__ = ["Waves"]

_T = TypeVar("_T")


class Waves:
    """Admits coroutines in waves. Used from one event loop."""

    def __init__(self) -> None:
        self._running = 0
        self._next: asyncio.Future[None] | None = None

    async def run(self, start: Callable[[], Awaitable[_T]]) -> _T:
        """Await `start()` in the current wave if none is in flight, else in the next."""
        if self._running:
            if self._next is None:
                self._next = asyncio.get_running_loop().create_future()
            # Shielded: one waiter's cancellation must not cancel the wave's start.
            await asyncio.shield(self._next)
        self._running += 1
        try:
            return await start()
        finally:
            self._running -= 1
            if self._running == 0 and self._next is not None:
                wave, self._next = self._next, None
                wave.set_result(None)
