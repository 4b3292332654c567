"""The Quietwire warehouse (DuckDB): its schema, the sink's write path and retention.

A contract package: the ingest's sink writes through it and analytics reads the tables it
defines; it imports neither (see `make lint`'s import contracts).
"""

from warehouse._retention import (
    count_past_retention,
    enforce_retention,
    retention_cutoff,
    rows_by_tier,
)
from warehouse._schema import SCHEMA_VERSION, apply_schema, connect
from warehouse._write import PartitionOffset, WriteResult, stored_offsets, write_envelopes

__all__ = [
    "SCHEMA_VERSION",
    "PartitionOffset",
    "WriteResult",
    "apply_schema",
    "connect",
    "count_past_retention",
    "enforce_retention",
    "retention_cutoff",
    "rows_by_tier",
    "stored_offsets",
    "write_envelopes",
]
