"""The package's public door: a test pins the exported names."""

import ingest


def test_exported_names() -> None:
    assert set(ingest.__all__) == {
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
    }
    for name in ingest.__all__:
        assert getattr(ingest, name) is not None


def test_every_error_is_an_ingest_error() -> None:
    for name in (
        "BodyTooLarge",
        "BusUnavailable",
        "ConfigurationError",
        "MalformedBody",
    ):
        assert issubclass(getattr(ingest, name), ingest.IngestError)
    assert ingest.BusUnavailable("x").status_code == 503
    assert all(
        cls("x").status_code < 500
        for cls in (ingest.BodyTooLarge, ingest.TooManyItems, ingest.MalformedBody)
    )
