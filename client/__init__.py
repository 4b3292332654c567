"""Quietwire's client: the library a desktop app embeds.

Record signals with instruments; the client aggregates per window with bounded
contributions, releases each window through OpenDP, signs and seals the envelope to
the ingest's key and sends it off the host app's thread. Recording never raises.

    from client import Telemetry, TelemetryConfig
    qw = Telemetry(TelemetryConfig(app=..., region="eu", ingest_public_key=..., ...))
    qw.grant_consent("performance")       # opt-in: nothing of a tier leaves before this
    requests = qw.counter("inference.requests")
    requests.add(1, route="local", model="qwen2.5-7b@1.1")
"""

from client._attestor import AttestationRefused, DeviceAttestor
from client._config import TelemetryConfig
from client._consent import ConsentError
from client._drops import DropReason
from client._errors import (
    ClientError,
    ConfigError,
    KeyStoreError,
    ReleaseError,
    SignalKindError,
    SpoolError,
    TransportError,
    UnknownSignalError,
)
from client._instruments import BoundCounter, BoundHistogram, Counter, Histogram
from client._keys import KeyStore, SoftwareKeyStore
from client._keystore_fallback import FallbackKeyStore
from client._ledger import LedgerError
from client._privacy import reset_device_ledger
from client._release import TrueCounter, TrueHistogram, TrueTotal
from client._sealing import EnvelopeSealer
from client._telemetry import CollectedWindow, Telemetry
from client._transport import HttpTransport, MemoryTransport, Transport

__all__ = [
    "AttestationRefused",
    "BoundCounter",
    "BoundHistogram",
    "ClientError",
    "CollectedWindow",
    "ConfigError",
    "ConsentError",
    "Counter",
    "DeviceAttestor",
    "DropReason",
    "EnvelopeSealer",
    "FallbackKeyStore",
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
]
