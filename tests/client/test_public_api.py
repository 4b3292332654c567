import client


def test_exported_names_are_pinned() -> None:
    assert set(client.__all__) == {
        "AttestationRefused",
        "DeviceAttestor",
        "FallbackKeyStore",
        "BoundCounter",
        "BoundHistogram",
        "ClientError",
        "CollectedWindow",
        "ConfigError",
        "ConsentError",
        "Counter",
        "DropReason",
        "EnvelopeSealer",
        "Histogram",
        "HttpTransport",
        "KeyStore",
        "KeyStoreError",
        "LedgerError",
        "MemoryTransport",
        "ReleaseError",
        "SignalKindError",
        "SoftwareKeyStore",
        "SpoolError",
        "Telemetry",
        "TelemetryConfig",
        "Transport",
        "TransportError",
        "TrueCounter",
        "TrueHistogram",
        "TrueTotal",
        "UnknownSignalError",
        "reset_device_ledger",
    }
    for name in client.__all__:
        assert getattr(client, name).__doc__, f"{name} has no docstring"
