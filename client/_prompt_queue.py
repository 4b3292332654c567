"""Prompts waiting to be redacted and counted off the app's thread.

`Telemetry.record_prompt` in background mode only checks the size cap and hands the
prompt (a reference to the app's string: no copy, nothing on disk) to this queue; the
worker redacts and counts what it holds at the start of every round, before it closes
windows, so a prompt counts in the window open when it was recorded. Bounded: a full
queue drops the new prompt and counts it (`prompt_queue_full`), so the caller never
waits and a flood of prompts holds a bounded amount of the app's memory. A consent
decision on a prompt's tier discards the prompts queued before it (`discard`): they
were recorded under the previous decision.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

from client._drops import DropCounter, DropReason

__all__ = ["MAX_QUEUED_PROMPTS", "PromptQueue"]

MAX_QUEUED_PROMPTS = 128
"""Prompts held for the worker at most (each at most `MAX_PROMPT_CHARS`)."""


class PromptQueue:
    """A bounded FIFO of (prompt, signal) pairs; `offer` never blocks. Thread-safe."""

    __slots__ = ("_capacity", "_drops", "_items", "_lock")

    def __init__(self, drops: DropCounter, capacity: int = MAX_QUEUED_PROMPTS) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._capacity = capacity
        self._drops = drops
        self._items: deque[tuple[str, str]] = deque()
        self._lock = threading.Lock()

    def offer(self, text: str, signal: str) -> bool:
        """Queue a prompt; False if the queue is full (the prompt dropped, counted)."""
        with self._lock:
            queued = len(self._items) < self._capacity
            if queued:
                self._items.append((text, signal))
        if not queued:
            self._drops.add(DropReason.PROMPT_QUEUE_FULL)
        return queued

    @property
    def half_full(self) -> bool:
        """Whether the worker should drain now rather than at its next round."""
        return len(self._items) * 2 >= self._capacity

    def drain(self) -> list[tuple[str, str]]:
        """Everything queued, oldest first; the queue is empty afterwards."""
        with self._lock:
            items = list(self._items)
            self._items.clear()
        return items

    def discard(self, signal_matches: Callable[[str], bool]) -> int:
        """Remove the prompts whose signal `signal_matches`; returns how many. The others
        stay queued, in order."""
        with self._lock:
            kept = [item for item in self._items if not signal_matches(item[1])]
            gone = len(self._items) - len(kept)
            self._items = deque(kept)
        return gone

    def __len__(self) -> int:
        return len(self._items)

    def reset_after_fork(self) -> None:
        """A fresh lock in a forked child (another thread may have held it)."""
        self._lock = threading.Lock()
