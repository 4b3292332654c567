"""`tune_garbage_collector`: what a long-running ingest process changes about the GC.

Run in a child process: the tuning is process-wide, and this test process must keep
CPython's defaults."""

from __future__ import annotations

import json
import subprocess
import sys

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


def test_tuning_freezes_start_up_objects_and_keeps_collecting_cycles() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD.format(young=GC_YOUNG_THRESHOLD)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    seen = json.loads(out.stdout)
    assert seen["enabled"] is True
    assert seen["after"] == [GC_YOUNG_THRESHOLD, seen["before"][1], seen["before"][2]]
    assert seen["frozen"] > 1_000  # the interpreter's and the ingest's modules, at least
    assert seen["nodes"] == 0  # garbage cycles made after the tuning did not survive
