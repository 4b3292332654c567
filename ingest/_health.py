"""Health: what a process depends on, checked cheaply, bounded in time, and cached.

Each dependency is a probe: an async function answering a `Check` (ok, and a detail a
person can act on). A `CachedProbe` bounds it with a timeout, keeps the answer for `ttl`
seconds (a load balancer polling every second costs one real check per `ttl`), lets
concurrent callers share the check in flight, and turns any exception into a failed
`Check`. `mark_down` records a failure seen elsewhere (a publish that timed out), so
callers fail fast until the next check says otherwise.

The ingest's `/healthz` and the sink's health endpoint both report a name → `Check` map
and answer 503 when any dependency is down, naming it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from pydantic import BaseModel

from auditlog import AuditLog
from ingest._registry import DeviceRegistry

__all__ = [
    "MIN_FREE_BYTES",
    "CachedProbe",
    "Check",
    "DependencyHealth",
    "Probe",
    "audit_log_probe",
    "check_all",
    "registry_probe",
]


@dataclass(frozen=True, slots=True)
class Check:
    """One dependency's answer: up or not, and what was seen."""

    ok: bool
    detail: str


Probe = Callable[[], Awaitable[Check]]


class CachedProbe:
    """A probe with a timeout, a short cache, and one check in flight at a time."""

    def __init__(
        self,
        probe: Probe,
        *,
        ttl: float = 1.5,
        timeout: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._probe = probe
        self._ttl = ttl
        self._timeout = timeout
        self._clock = clock
        self._last: Check | None = None
        self._at = 0.0
        self._inflight: asyncio.Future[Check] | None = None

    @property
    def last(self) -> Check | None:
        """The latest answer, however old (None before the first check)."""
        return self._last

    async def check(self) -> Check:
        """The cached answer if younger than `ttl`, else a fresh check (shared)."""
        if self._last is not None and self._clock() - self._at < self._ttl:
            return self._last
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.ensure_future(self._run())
        # Shielded: a caller that goes away must not cancel the check others await.
        return await asyncio.shield(self._inflight)

    def mark_down(self, detail: str) -> None:
        """Record a failure observed outside the probe; it holds for `ttl` seconds."""
        self._last, self._at = Check(False, detail), self._clock()

    async def _run(self) -> Check:
        try:
            result = await asyncio.wait_for(self._probe(), self._timeout)
        except TimeoutError:
            result = Check(False, f"no answer within {self._timeout:g}s")
        except Exception as exc:  # a probe's failure is its answer, never the caller's error
            result = Check(False, _describe(exc))
        self._last, self._at = result, self._clock()
        return result


def _describe(exc: Exception) -> str:
    """ "Class: first line" (aiokafka's errors already start with their class name)."""
    lines = str(exc).strip().splitlines()
    text, name = (lines[0] if lines else ""), type(exc).__name__
    return text if text.startswith(name) else f"{name}: {text}"


class DependencyHealth(BaseModel):
    """A dependency as health endpoints report it."""

    ok: bool
    detail: str


async def check_all(probes: Mapping[str, CachedProbe]) -> dict[str, DependencyHealth]:
    """Every probe, concurrently: name -> its answer."""
    names = list(probes)
    answers = await asyncio.gather(*(probes[name].check() for name in names))
    return {
        name: DependencyHealth(ok=a.ok, detail=a.detail)
        for name, a in zip(names, answers, strict=True)
    }


def registry_probe(registry: DeviceRegistry) -> Probe:
    """The device registry answers a read (in a worker thread: SQLite blocks)."""

    async def probe() -> Check:
        await asyncio.to_thread(registry.get, "")  # no device has an empty id
        return Check(True, "open")

    return probe


MIN_FREE_BYTES = 64 * 1024 * 1024
"""Free space the state disk must keep for /healthz to say ok. Below it the audit log,
the device ledger and the outbox (all on that disk) are about to refuse writes, and
every request would be a 503: a probe that sees it coming lets an orchestrator act
first. (64 MiB: some 200,000 audit entries.)"""


def audit_log_probe(audit: AuditLog, *, min_free: int = MIN_FREE_BYTES) -> Probe:
    """The audit log answers a read, its file and folder are writable by this process
    (SQLite's WAL mode writes beside the file), and their disk has `min_free` bytes
    free. Nothing is appended: a health check must not grow the log."""

    async def probe() -> Check:
        await asyncio.to_thread(audit.head)
        for path in (audit.path, audit.path.parent):
            if not os.access(path, os.W_OK):
                return Check(False, f"{path} is not writable")
        free = shutil.disk_usage(audit.path.parent).free
        if free < min_free:
            return Check(
                False,
                f"{free // (1024 * 1024)} MiB free on the disk of {audit.path.parent} "
                f"(at least {min_free // (1024 * 1024)} MiB needed)",
            )
        return Check(True, "open, writable")

    return probe
