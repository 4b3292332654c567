"""`tune_garbage_collector`: what a long-running ingest process changes about the GC.

Run in a child process: the tuning is process-wide, and this test process must keep
CPython's defaults."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from typing import Any

from ingest._process import GC_YOUNG_THRESHOLD, collect_periodically

_CHILD = """
import gc, json
from ingest._process import tune_garbage_collector
before = gc.get_threshold()
tune_garbage_collector()
class Node:
    pass
for _ in range(3 * {young}):  # cycles made after the tuning are still collected
    a, b = Node(), Node()
    a.other, b.other = b, a
del a, b
gc.collect()
print(json.dumps({{"before": before, "after": gc.get_threshold(),
                  "frozen": gc.get_freeze_count(), "enabled": gc.isenabled(),
                  "nodes": sum(isinstance(o, Node) for o in gc.get_objects())}}))
"""


def _child(code: str) -> dict[str, Any]:
    """What `code`, run in a fresh interpreter, printed as JSON."""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    seen: dict[str, Any] = json.loads(out.stdout)
    return seen


def test_tuning_freezes_start_up_objects_and_keeps_collecting_cycles() -> None:
    seen = _child(_CHILD.format(young=GC_YOUNG_THRESHOLD))
    assert seen["enabled"] is True
    assert seen["after"] == [GC_YOUNG_THRESHOLD, seen["before"][1], seen["before"][2]]
    assert seen["frozen"] > 1_000  # the interpreter's and the ingest's modules, at least
    assert seen["nodes"] == 0  # garbage cycles made after the tuning did not survive


_AFTER_START_UP = """
import gc, json
from ingest._process import freeze_after_start_up, tune_garbage_collector
untuned = freeze_after_start_up()  # a process that was not tuned: nothing happens
tune_garbage_collector()
frozen_at_tuning = gc.get_freeze_count()
class Opened:
    pass
started = [Opened() for _ in range(20_000)]  # what the lifespan opens after the tuning
froze = freeze_after_start_up()
print(json.dumps({"untuned": untuned, "froze": froze,
                  "added": gc.get_freeze_count() - frozen_at_tuning,
                  "in_sight": sum(1 for o in gc.get_objects() if o is started)}))
"""


def test_what_start_up_opens_after_the_tuning_is_frozen_too() -> None:
    seen = _child(_AFTER_START_UP)
    assert seen["untuned"] is False
    assert seen["froze"] is True
    assert seen["added"] >= 20_000  # the start-up objects left the collector's sight
    assert seen["in_sight"] == 0


_SINK_OPEN = """
import json, sys, tempfile
from pathlib import Path
from ingest._sink import DuckDBSink
sink = DuckDBSink(Path(tempfile.mkdtemp()) / "w.duckdb")
print(json.dumps({"pandas": "pandas" in sys.modules}))
"""


def test_a_sink_loads_what_pyarrow_loads_lazily_when_it_opens() -> None:
    # pandas is installed here (a development dependency): pyarrow imports it on its
    # first conversion of a list, which must happen at start-up, not on the first batch.
    assert _child(_SINK_OPEN) == {"pandas": True}


_SCHEDULED = """
import asyncio, gc, json
from ingest import _process
untuned = _process.collect_garbage()  # not tuned: CPython's own thresholds rule
_process.tune_garbage_collector()
class Node:
    pass
def cycles(n):
    for _ in range(n):
        a, b = Node(), Node()
        a.other, b.other = b, a
def passes():
    return [s["collections"] for s in gc.get_stats()]
cycles(1000)
before = passes()
middle = _process.collect_garbage()  # the full pass ran at tuning: a middle one now
after_middle = passes()
left_middle = sum(isinstance(o, Node) for o in gc.get_objects())
_process.FULL_PASS_SECONDS = 0.0
cycles(1000)
_process.collect_garbage()
after_full = passes()
async def periodic():
    cycles(1000)
    stop = asyncio.Event()
    job = asyncio.create_task(_process.collect_periodically(stop, interval=0.05))
    before = sum(passes())
    for _ in range(1000):  # until the job's first pass (at most 10 s on a loaded machine)
        await asyncio.sleep(0.01)
        if sum(passes()) > before:
            break
    stop.set()
    await job
asyncio.run(periodic())
print(json.dumps({"untuned": untuned, "middle": middle, "before": before,
                  "after_middle": after_middle, "left_middle": left_middle,
                  "after_full": after_full,
                  "left_periodic": sum(isinstance(o, Node) for o in gc.get_objects())}))
"""


def test_scheduled_passes_collect_cycles_and_a_full_one_when_due() -> None:
    seen = _child(_SCHEDULED)
    assert seen["untuned"] is False
    assert seen["middle"] is True
    assert seen["after_middle"][1] == seen["before"][1] + 1  # young and middle
    assert seen["after_middle"][2] == seen["before"][2]
    assert seen["left_middle"] == 0
    assert seen["after_full"][2] == seen["after_middle"][2] + 1  # due: every generation
    assert seen["left_periodic"] == 0  # the periodic job collected, then stopped


async def test_an_untuned_periodic_collector_waits_for_its_stop() -> None:
    """In a sink, a companion job that ends by itself is a failure: untuned (a test
    process), the job still runs until asked to stop."""
    stop = asyncio.Event()
    job = asyncio.create_task(collect_periodically(stop, interval=0.01))
    await asyncio.sleep(0.05)
    assert not job.done()
    stop.set()
    await asyncio.wait_for(job, 1.0)
