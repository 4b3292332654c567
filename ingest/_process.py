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

Nothing here switches the collector off: cycles are still collected, a little later.
Called by the entry points of a process, never by `create_app` (a test process builds
many apps, and freezing each one's objects would keep their cycles for good).
"""

from __future__ import annotations

import gc

__all__ = ["GC_YOUNG_THRESHOLD", "freeze_after_start_up", "tune_garbage_collector"]

_tuned = False
"""Whether this process was tuned (`freeze_after_start_up` acts only then)."""

GC_YOUNG_THRESHOLD = 10_000
"""Tracked allocations between young-generation passes (CPython's default: 700). A wave
of 16 requests of 10 envelopes allocates about this many; memory held by garbage cycles
waiting for a pass stays a few MiB at most."""


def tune_garbage_collector() -> None:
    """Collect what start-up left, move the survivors (modules, classes, validators:
    kept for the process's life) out of the collector's sight (`gc.freeze`), and make
    young-generation passes rarer. Call once, after the app is built, before serving."""
    global _tuned
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)
    _tuned = True


def freeze_after_start_up() -> bool:
    """In a process `tune_garbage_collector` tuned: collect, then freeze what start-up
    made since (see the module docstring); elsewhere (tests, a library user's process)
    nothing. Returns whether it froze."""
    if not _tuned:
        return False
    gc.collect()
    gc.freeze()
    return True
