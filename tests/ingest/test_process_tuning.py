"""`tune_garbage_collector`: what a long-running ingest process changes about the GC.

Run in a child process: the tuning is process-wide, and this test process must keep
CPython's defaults."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from ingest._process import GC_YOUNG_THRESHOLD

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
