"""Quietwire's wire format: pydantic v2 models, with exported JSON Schema. No I/O."""

from schemas._aggregates import (
    Aggregate,
    CounterAggregate,
    HistogramAggregate,
    Mechanism,
    NoiseSpec,
    Tier,
)
from schemas._envelope import AppInfo, EnvelopeV1, IngestedEnvelope
from schemas._export import JSONSCHEMA_DIR, json_schemas, write_json_schemas
from schemas._identity import device_id_for, key_fingerprint
from schemas._wire import (
    MAX_BATCH,
    MAX_SEALED_BYTES,
    BatchResult,
    EnvelopeBatch,
    ItemResult,
    RejectReason,
    SignedEnvelope,
)

__all__ = [
    "JSONSCHEMA_DIR",
    "MAX_BATCH",
    "MAX_SEALED_BYTES",
    "Aggregate",
    "AppInfo",
    "BatchResult",
    "CounterAggregate",
    "EnvelopeBatch",
    "EnvelopeV1",
    "HistogramAggregate",
    "IngestedEnvelope",
    "ItemResult",
    "Mechanism",
    "NoiseSpec",
    "RejectReason",
    "SignedEnvelope",
    "Tier",
    "device_id_for",
    "json_schemas",
    "key_fingerprint",
    "write_json_schemas",
]
