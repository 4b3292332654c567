"""Process-wide tuning of a long-running ingest process (the service, the Kafka sink).

CPython's cyclic garbage collector runs a young-generation pass every 700 tracked
allocations by default, and a full pass over every tracked object whenever enough of
them have survived. Under load the ingest allocates tens of tracked objects per envelope
(parsed models, their lists and dicts, futures), and those of a wave in flight survive a
pass or two, so the default thresholds scan them again and again, and every full pass
walks the ~130,000 objects of the imported framework as well. Measured on the ingest
benchmark (A/B against the defaults, alternating rounds): 14% (8 rounds) to 18% (12
rounds) less server CPU per envelope at batch 10, about what switching the collector
off gives, and no change at batch 1.

Start-up does not end where the entry point calls `tune_garbage_collector`: the app's
lifespan then opens the bus and the warehouse (DuckDB, pyarrow and their modules),
uvicorn loads its protocol modules, and pyarrow loads what its first conversion needs
(pandas too, where it is installed). Those objects (about 30,000 on the benchmark:
functions, classes, descriptors) stayed in the collector's sight, so every pass of the
middle generation walked them again (about 30 to 40 ms each, every few thousand
envelopes).
`freeze_after_start_up`, called by the lifespan (and the Kafka sink) once everything is
open, freezes them too, in a process that was tuned.

**When the passes run.** What a pass costs is what is alive when it runs: about 200 ns
per live object (each one's referents are visited, mostly cold in the caches). In the
embedded ingest most of what is alive is the outbox's queue, the envelopes answered
but not yet in the warehouse (about 20 tracked objects each, held for up to the
drain interval), and CPython counts a young pass due after so many more live objects,
so under load the passes came as the queue grew: each queued envelope was walked by a
young pass and again by each middle-generation pass while it waited (measured in the
benchmark's server, batch 10: 4 to 9 µs per envelope in young passes and a 25 to 35 ms
middle pass every few thousand envelopes, together 10 to 14 µs per envelope). So the
passes are scheduled instead (`collect_garbage`): the drain calls it right after it
has released a part it stored, when the queue is at its shortest (0.4 ms a pass, 0.2
µs per envelope), and `collect_periodically` runs it every `COLLECT_SECONDS` when
nothing else did (the Kafka ingest, the sink, a quiet ingest). A full pass runs at
most every `FULL_PASS_SECONDS`, at one of those times. The young threshold stays as a
safety net (`GC_YOUNG_THRESHOLD`, live objects: above the queue of a full drain part),
for a process whose loop stopped calling.

Nothing here switches the collector off: cycles are still collected, a little later.
Called by the entry points of a process, never by `create_app` (a test process builds
many apps, and freezing each one's objects would keep their cycles for good).
"""

from __future__ import annotations

import asyncio
import gc
import time

__all__ = [
    "COLLECT_SECONDS",
    "FULL_PASS_SECONDS",
    "GC_YOUNG_THRESHOLD",
    "collect_garbage",
    "collect_periodically",
    "freeze_after_start_up",
    "tune_garbage_collector",
]

_tuned = False
"""Whether this process was tuned (`freeze_after_start_up` acts only then)."""

GC_YOUNG_THRESHOLD = 200_000
"""Tracked objects allocated and still alive since the last pass that make CPython run
a young pass by itself (its default: 700). Passes are scheduled (`collect_garbage`);
this is the safety net, above what a queue of one full drain part (2,000 envelopes,
about 50,000 objects) and the requests in flight hold."""
COLLECT_SECONDS = 5.0
"""`collect_periodically`'s interval: a pass then, unless one ran meanwhile. Longer than
the outbox drain's interval (1 s), so that under load the drain's passes (at the
queue's shortest) are the ones that run."""
FULL_PASS_SECONDS = 60.0
"""At most this often a scheduled pass is a full one (every generation)."""

_last_pass = 0.0
_last_full_pass = 0.0


def tune_garbage_collector() -> None:
    """Collect what start-up left, move the survivors (modules, classes, validators:
    kept for the process's life) out of the collector's sight (`gc.freeze`), and make
    young-generation passes rarer. Call once, after the app is built, before serving."""
    global _tuned, _last_pass, _last_full_pass
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)
    _tuned = True
    _last_pass = _last_full_pass = time.monotonic()


def freeze_after_start_up() -> bool:
    """In a process `tune_garbage_collector` tuned: collect, then freeze what start-up
    made since (see the module docstring); elsewhere (tests, a library user's process)
    nothing. Returns whether it froze."""
    if not _tuned:
        return False
    gc.collect()
    gc.freeze()
    return True


def collect_garbage() -> bool:
    """In a process `tune_garbage_collector` tuned: a pass over the young and middle
    generations now, or over every generation if the last full one is
    `FULL_PASS_SECONDS` old; elsewhere nothing (CPython's own thresholds rule). For a
    moment when little is alive: the outbox drain calls it right after releasing a
    stored part. Returns whether it collected."""
    global _last_pass, _last_full_pass
    if not _tuned:
        return False
    now = time.monotonic()
    if now - _last_full_pass >= FULL_PASS_SECONDS:
        gc.collect(2)
        _last_full_pass = now
    else:
        gc.collect(1)
    _last_pass = now
    return True


async def collect_periodically(
    stop: asyncio.Event | None = None, *, interval: float = COLLECT_SECONDS
) -> None:
    """Every `interval` seconds, `collect_garbage` unless a pass ran meanwhile, until
    `stop` is set (or the task is cancelled). In a process that was not tuned it only
    waits (a companion job of the sink must not end by itself)."""
    while stop is None or not stop.is_set():
        if stop is None:
            await asyncio.sleep(interval)
        else:
            try:
                await asyncio.wait_for(stop.wait(), interval)
            except TimeoutError:
                pass
            else:
                return
        if time.monotonic() - _last_pass >= interval:
            collect_garbage()
