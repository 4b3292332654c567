"""Quietwire's ingest: the async service that verifies sealed, signed envelopes and the
sink that stores them in DuckDB exactly once.

    app = create_app(IngestSettings())            # POST /v1/envelopes, GET /v1/ingest-key
    AuditLog(path, read_only=True).verify_chain() # the auditor's view of the audit log
    python -m ingest serve | python -m ingest sink | python -m ingest keygen PATH
"""

from auditlog import AuditEntry, AuditLog, AuditRecord, ChainReport
from ingest._app import create_app, default_bus
from ingest._bus import EnvelopeBus, InMemoryEnvelopeBus, InProcessEnvelopeBus, KafkaEnvelopeBus
from ingest._errors import (
    BodyTooLarge,
    BusUnavailable,
    ConfigurationError,
    IngestError,
    MalformedBody,
    RequestRejected,
    TooManyItems,
)
from ingest._intake import EnvelopeIntake
from ingest._keys import load_ingest_key, read_private_key, write_private_key
from ingest._outbox import Outbox
from ingest._outbox_bus import OutboxEnvelopeBus
from ingest._routes import HealthStatus, IngestKeyInfo
from ingest._settings import IngestSettings, check_bootstrap
from ingest._sink import DEFAULT_SINK_GROUP, DeadLetter, DuckDBSink
from ingest._sink_consumer import KafkaSinkConsumer, SinkStats
from ingest._verify import Accepted, EnvelopeVerifier, RecentlyAccepted, Rejected, Verdict

__all__ = [
    "DEFAULT_SINK_GROUP",
    "Accepted",
    "AuditEntry",
    "AuditLog",
    "AuditRecord",
    "BodyTooLarge",
    "BusUnavailable",
    "ChainReport",
    "ConfigurationError",
    "DeadLetter",
    "DuckDBSink",
    "EnvelopeBus",
    "EnvelopeIntake",
    "EnvelopeVerifier",
    "HealthStatus",
    "InMemoryEnvelopeBus",
    "InProcessEnvelopeBus",
    "IngestError",
    "IngestKeyInfo",
    "IngestSettings",
    "KafkaEnvelopeBus",
    "KafkaSinkConsumer",
    "MalformedBody",
    "Outbox",
    "OutboxEnvelopeBus",
    "RecentlyAccepted",
    "Rejected",
    "RequestRejected",
    "SinkStats",
    "TooManyItems",
    "Verdict",
    "check_bootstrap",
    "create_app",
    "default_bus",
    "load_ingest_key",
    "read_private_key",
    "write_private_key",
]
