"""`TelemetryConfig`: everything the client needs, validated once at construction."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SkipValidation, model_validator

from client._keys import KeyStore
from client._transport import Transport
from policies import Policy, load_attestation_policy, load_policy
from schemas import AppInfo, Tier

__all__ = ["TelemetryConfig"]


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _packaged_software_tiers() -> frozenset[Tier]:
    # The attestation policy ships with the client, as with the ingest: what the ingest
    # accepts from software keys is known here, so nothing is released only to be refused.
    return load_attestation_policy().software_tiers


class TelemetryConfig(BaseModel):
    """Everything a `Telemetry` needs; validated once, at construction.

    Give `endpoint` (the ingest's base URL; batches go to `{endpoint}/v1/envelopes`) or
    a `transport`, not both. `state_dir` holds the device key (unless `key_store` is
    given), the persisted sequence number, the consent history, the privacy ledger and
    the encrypted spool of pending envelopes. `clock` returns an aware datetime; a
    simulator passes its own, with `mode="manual"`. `software_tiers` are the tiers the
    ingest accepts from a software (non-TPM) key: the attestation policy's
    `software_assurance` (default: the packaged `policies/attestation.yaml`; a fleet
    whose ingest runs another attestation policy passes its tiers). Invalid values raise
    pydantic's `ValidationError` (a `ValueError`) naming the field.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    app: AppInfo
    region: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")
    policy: Policy = Field(default_factory=load_policy)
    ingest_public_key: bytes = Field(description="the region ingest's raw X25519 key")
    endpoint: str | None = Field(default=None, description="ingest base URL, e.g. https://...")
    transport: SkipValidation[Transport | None] = None
    state_dir: Path
    key_store: SkipValidation[KeyStore | None] = None
    clock: SkipValidation[Callable[[], datetime]] = _utcnow
    monotonic: SkipValidation[Callable[[], float] | None] = Field(
        default=None,
        description="the privacy budget's real-time clock, in seconds, never set back "
        "(client._clock). None: client._realtime.suspend_aware_monotonic (counts from "
        "boot and through suspend) in background mode; in manual mode the "
        "`clock` itself (a simulator's time is its real time)",
    )
    mode: Literal["background", "manual"] = "background"
    max_pending: int = Field(default=1024, ge=1, description="envelopes held while offline")
    max_attempts: int = Field(default=5, ge=1, description="sends per batch per flush")
    retry_backoff: float = Field(default=0.5, ge=0.0, description="first retry delay, seconds")
    max_backoff: float = Field(default=300.0, ge=0.0)
    timeout: float = Field(default=10.0, gt=0.0, description="HTTP timeout, seconds")
    software_tiers: frozenset[Tier] = Field(
        default_factory=_packaged_software_tiers,
        description="tiers a device signing with a software key may send; a consented "
        "tier outside it is neither charged nor released while the key is software",
    )
    fingerprint_key: bytes | None = Field(
        default=None,
        description="the fleet's error-fingerprint key (>= 16 bytes, the same on every "
        "device of the fleet); without it `record_exception` drops and counts",
    )

    @model_validator(mode="after")
    def _check(self) -> TelemetryConfig:
        if len(self.ingest_public_key) != 32:
            raise ValueError("ingest_public_key must be the 32 raw bytes of an X25519 key")
        if (self.endpoint is None) == (self.transport is None):
            raise ValueError("give exactly one of endpoint (a URL) or transport")
        if self.endpoint is not None and not self.endpoint.startswith(("https://", "http://")):
            raise ValueError("endpoint must be an http(s) URL")
        if self.transport is not None and not isinstance(self.transport, Transport):
            raise ValueError("transport must be a client.Transport")
        if self.key_store is not None and not isinstance(self.key_store, KeyStore):
            raise ValueError("key_store must implement client.KeyStore")
        if self.fingerprint_key is not None and len(self.fingerprint_key) < 16:
            raise ValueError("fingerprint_key must be at least 16 bytes")
        return self
