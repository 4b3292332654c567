import client


def test_exported_names_are_pinned() -> None:
    assert set(client.__all__) == {
        "BoundCounter",
        "BoundHistogram",
        "ClientError",
        "CollectedWindow",
        "ConfigError",
        "Counter",
        "DropReason",
        "EnvelopeSealer",
        "Histogram",
        "HttpTransport",
        "KeyStore",
        "KeyStoreError",
        "MemoryTransport",
        "ReleaseError",
        "SignalKindError",
        "SoftwareKeyStore",
        "Telemetry",
        "TelemetryConfig",
        "Transport",
        "TransportError",
        "TrueCounter",
        "TrueHistogram",
        "UnknownSignalError",
    }
    for name in client.__all__:
        assert getattr(client, name).__doc__, f"{name} has no docstring"
