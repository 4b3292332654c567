"""One daemon thread that runs a tick function, and survives fork.

Like OpenTelemetry's periodic reader: one thread, ticks never overlap, and a forked
child (where the parent's threads do not exist) starts a thread of its own.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable

__all__ = ["PeriodicWorker"]

_log = logging.getLogger("client")


class PeriodicWorker:
    """Calls `tick()` on a daemon thread; `tick` returns the seconds to wait before the next.

    `wake()` runs the next tick now. `stop()` ends the thread after its current tick.
    """

    def __init__(self, tick: Callable[[], float], name: str) -> None:
        self._tick = tick
        self._name = name
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        ref = weakref.ref(self)

        def _after_fork_in_child() -> None:
            worker = ref()
            if worker is not None:
                worker._restart_in_child()

        os.register_at_fork(after_in_child=_after_fork_in_child)

    def start(self) -> None:
        """Start the thread (once)."""
        if self._thread is None and not self._stopped.is_set():
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()

    def on_worker_thread(self) -> bool:
        """Whether the caller is this worker's thread (inside a tick)."""
        return self._thread is not None and self._thread is threading.current_thread()

    def is_alive(self) -> bool:
        """Whether the thread is running (it ends after `stop`)."""
        return self._thread is not None and self._thread.is_alive()

    def wake(self) -> None:
        """Run a tick as soon as the current wait allows."""
        self._wake.set()

    def stop(self, timeout: float | None = None) -> None:
        """Stop after the current tick; wait up to `timeout` for the thread to end."""
        self._stopped.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                delay = self._tick()
            except Exception:  # the host app must never lose its telemetry thread
                _log.exception("telemetry tick failed")
                delay = 1.0
            self._wake.wait(max(delay, 0.0))
            self._wake.clear()

    def _restart_in_child(self) -> None:
        # Fresh events: a parent thread may have held their internal locks at fork time.
        stopped = self._stopped.is_set()
        self._stopped = threading.Event()
        if stopped:
            self._stopped.set()
        self._wake = threading.Event()
        self._thread = None
        if not self._stopped.is_set():
            self.start()
