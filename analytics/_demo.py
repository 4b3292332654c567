"""`quietwire demo`: a simulated fleet through client, ingest, sink and DuckDB, then the report.

Placeholder: the pipeline lead replaces `run_demo` with the end-to-end simulation.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["run_demo"]


def run_demo(
    *,
    devices: int,
    windows: int,
    db: Path,
    kafka: str | None,
    html: Path,
    seed: int | None,
) -> None:
    """Simulate `devices` devices for `windows` windows into `db`, then write the report.

    With `kafka` (a bootstrap address) envelopes travel through Kafka and the sink's
    consumer group; without it the ingest hands them to the sink in-process.
    """
    raise NotImplementedError("quietwire demo is not implemented yet")
