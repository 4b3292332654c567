"""The sink process (`python -m ingest sink`): wait for Kafka, consume until told to stop,
and never die silently.

- Start-up: the warehouse is opened first (a file that cannot be opened is a start-up
  error); then the consumer waits for a broker that is not up yet, with backoff and a
  warning per attempt, instead of exiting.
- Running: the consume loop, and any companion job (the leader's aggregation with
  `--aggregate`), are watched together. If one of them fails, or the consume loop ends
  without being asked to, the others are stopped, the failure is logged as CRITICAL
  with its traceback, and `run` returns exit status 1: never a dead task inside a live
  process.
- Health: `SinkService.health()` reports Kafka reachability, the warehouse, lag (end
  offsets minus stored offsets, per assigned partition) and what this run stored;
  `serve_health` answers it over HTTP (`GET /healthz`, 200 or 503 naming what is down).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Literal

from pydantic import BaseModel

from ingest._backoff import Backoff
from ingest._health import CachedProbe, Check, DependencyHealth, check_all
from ingest._sink import DuckDBSink
from ingest._sink_consumer import KafkaSinkConsumer

__all__ = ["Companion", "SinkHealth", "SinkService"]

log = logging.getLogger("quietwire.ingest.sink")

Companion = Callable[[asyncio.Event], Coroutine[Any, Any, None]]
"""A job that runs beside the consume loop until the event is set."""

SinkState = Literal["starting", "waiting_for_kafka", "consuming", "stopping", "stopped", "failed"]


class SinkHealth(BaseModel):
    """The sink's health answer (`GET /healthz` of `python -m ingest sink --health-port`)."""

    status: Literal["ok", "unavailable"]
    state: SinkState
    group: str
    topics: list[str]
    dependencies: dict[str, DependencyHealth]
    failing: list[str]
    lag: int | None
    """Messages on the assigned partitions not yet stored; None before assignment or
    while Kafka does not answer."""
    partition_lag: dict[str, int]
    """"topic:partition" -> its lag."""
    messages: int
    inserted: int
    dead_letters: int
    """This run's: messages read, envelopes newly stored, dead letters newly recorded."""


async def _ping(sink: DuckDBSink) -> Check:
    await asyncio.to_thread(sink.ping)
    return Check(True, "open")


class SinkService:
    """Runs a `KafkaSinkConsumer` (and companions) as a process's one job."""

    def __init__(
        self,
        sink: DuckDBSink,
        consumer: KafkaSinkConsumer,
        *,
        companions: Sequence[Companion] = (),
        backoff: Backoff | None = None,
        probe_timeout: float = 2.0,
    ) -> None:
        self._sink = sink
        self._consumer = consumer
        self._companions = list(companions)
        self._backoff = backoff or Backoff()
        self.state: SinkState = "starting"
        self._probes = {
            "kafka": CachedProbe(consumer.reachable, timeout=probe_timeout),
            "warehouse": CachedProbe(lambda: _ping(sink), timeout=probe_timeout),
        }
        self._probe_timeout = probe_timeout

    async def run(self, stopping: asyncio.Event) -> int:
        """Consume until `stopping` is set (0) or something fails (1, logged)."""
        self.state = "waiting_for_kafka"
        try:
            if not await self._consumer.start_when_reachable(stopping, self._backoff):
                self.state = "stopped"
                return 0
        except Exception as exc:  # not "no broker yet" (that is retried): cannot go on
            self.state = "failed"
            log.critical(
                "sink exiting: cannot start: %s: %s", type(exc).__name__, exc, exc_info=exc
            )
            return 1
        self.state = "consuming"
        consume = asyncio.create_task(self._consumer.run_until(), name="sink-consume")
        jobs = [asyncio.create_task(job(stopping)) for job in self._companions]
        stop = asyncio.create_task(stopping.wait())
        done, _ = await asyncio.wait([consume, *jobs, stop], return_when=asyncio.FIRST_COMPLETED)
        asked_to_stop = stopping.is_set()
        self.state = "stopping"
        stopping.set()  # companions finish their round
        failures: list[tuple[str, BaseException]] = []
        try:
            await self._consumer.stop()  # the current batch finishes, then the group is left
        except Exception as exc:
            failures.append(("consumer's shutdown", exc))
        stop.cancel()
        for name, task in [("consume loop", consume), *(("companion job", j) for j in jobs)]:
            try:
                await task
            except Exception as exc:
                failures.append((name, exc))
                continue
            if task in done and not asked_to_stop:
                failures.append((name, RuntimeError("it ended without being asked to")))
        if failures:
            self.state = "failed"
            for name, error in failures:
                log.critical(
                    "sink exiting: the %s failed: %s: %s",
                    name,
                    type(error).__name__,
                    error,
                    exc_info=error,
                )
            return 1
        self.state = "stopped"
        log.info("sink stopped: %s", self._consumer.stats)
        return 0

    async def health(self) -> SinkHealth:
        """What the sink depends on, and how far behind it is."""
        dependencies = await check_all(self._probes)
        lag: dict[tuple[str, int], int] | None = None
        if dependencies["kafka"].ok and dependencies["warehouse"].ok:
            try:
                lag = await asyncio.wait_for(self._consumer.lag(), self._probe_timeout)
            except Exception as exc:  # lag is information; its failure is reported, not raised
                log.warning("sink lag unavailable: %s", exc)
        failing = [name for name, d in dependencies.items() if not d.ok]
        if self.state in ("failed", "stopped"):
            failing.append("sink")
        stats = self._consumer.stats
        return SinkHealth(
            status="unavailable" if failing else "ok",
            state=self.state,
            group=self._sink.group,
            topics=self._consumer.topics,
            dependencies=dependencies,
            failing=failing,
            lag=None if lag is None else sum(lag.values()),
            partition_lag={f"{t}:{p}": n for (t, p), n in sorted((lag or {}).items())},
            messages=stats.messages,
            inserted=stats.inserted,
            dead_letters=stats.dead_letters,
        )
