"""The client's one exception tree.

Only setup-time calls raise (building a `Telemetry`, asking for an instrument that the
policy does not declare, a key store that cannot be opened). The record path never
raises: bad input there is dropped and counted (see `client._drops`).

    ClientError
    ├── ConfigError          bad configuration given to `Telemetry`
    ├── UnknownSignalError   an instrument name the policy does not declare
    ├── SignalKindError      the name is declared with another kind (counter/histogram)
    ├── KeyStoreError        the device key cannot be read, created or trusted
    ├── ReleaseError         a DP measurement cannot be built for a signal
    ├── LedgerError          the privacy ledger cannot be opened, trusted or written
    │                        (client._ledger; a damaged journal is not raised but held
    │                        as `Telemetry.ledger_problem()` until `reset_ledger`)
    ├── ConsentError         the consent history cannot be read or written (client._consent)
    ├── SpoolError           the on-disk spool cannot be opened (client._spool)
    └── TransportError       the ingest could not be reached or failed (retryable)
"""

from __future__ import annotations

__all__ = [
    "ClientError",
    "ConfigError",
    "KeyStoreError",
    "ReleaseError",
    "SignalKindError",
    "SpoolError",
    "TransportError",
    "UnknownSignalError",
]


class ClientError(Exception):
    """Root of every error the client raises."""


class ConfigError(ClientError, ValueError):
    """The configuration given to the client is invalid."""


class UnknownSignalError(ClientError, KeyError):
    """The policy's catalogue has no signal of this name."""

    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        self.known = known
        super().__init__(f"signal {name!r} is not in the policy catalogue (known: {known})")

    def __str__(self) -> str:
        # KeyError quotes its argument; we want the plain sentence.
        return str(self.args[0])


class SignalKindError(ClientError, TypeError):
    """The signal exists but is declared as another kind of instrument."""

    def __init__(self, name: str, declared: str, requested: str) -> None:
        self.name = name
        self.declared = declared
        self.requested = requested
        super().__init__(f"signal {name!r} is declared as a {declared}, not a {requested}")


class KeyStoreError(ClientError):
    """The device signing key cannot be loaded, created or trusted."""


class ReleaseError(ClientError):
    """A differentially private release could not be built or verified."""


class SpoolError(ClientError):
    """The spool of pending envelopes (or its key) cannot be created or read."""


class TransportError(ClientError):
    """Sending a batch failed in a way that is worth retrying (network error, 5xx, 429)."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        self.status_code = status_code
        super().__init__(message)
