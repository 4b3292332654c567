"""The Quietwire warehouse (DuckDB): its schema, the sink's write path, retention, and
the rewrite that makes deleted values physically absent (`compact`).

A contract package: the ingest's sink writes through it and analytics reads the tables it
defines; it imports neither (see `make lint`'s import contracts).
"""

from warehouse._compact import (
    Compaction,
    CompactionError,
    ErasureCompactor,
    compact,
    pending_erasures,
)
from warehouse._dead_letters import UNSTORABLE, DeadLetter, DeadLetterStage, describe_error
from warehouse._files import duckdb_file_problem
from warehouse._retention import (
    RETENTION_TABLES,
    RetentionRun,
    apply_retention,
    count_past_retention,
    enforce_retention,
    retention_cutoff,
    rows_by_tier,
)
from warehouse._schema import COLUMNS_SINCE, SCHEMA_VERSION, apply_schema, connect
from warehouse._times import UnstorableValue
from warehouse._write import (
    PartitionOffset,
    WriteResult,
    load_arrow_conversions,
    stored_offsets,
    write_envelopes,
)

__all__ = [
    "COLUMNS_SINCE",
    "RETENTION_TABLES",
    "SCHEMA_VERSION",
    "UNSTORABLE",
    "Compaction",
    "CompactionError",
    "DeadLetter",
    "DeadLetterStage",
    "ErasureCompactor",
    "PartitionOffset",
    "RetentionRun",
    "UnstorableValue",
    "WriteResult",
    "apply_retention",
    "apply_schema",
    "compact",
    "connect",
    "count_past_retention",
    "describe_error",
    "duckdb_file_problem",
    "enforce_retention",
    "load_arrow_conversions",
    "pending_erasures",
    "retention_cutoff",
    "rows_by_tier",
    "stored_offsets",
    "write_envelopes",
]
