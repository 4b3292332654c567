"""Envelope v1: one device's released aggregates for one window.

The envelope is pure data. The client serializes it to JSON bytes, signs exactly those
bytes and seals the signed form to the ingest's key (see `schemas._wire`); the ingest
verifies the signature over the same bytes before it parses them, so no canonical JSON
form is needed.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from schemas._aggregates import Aggregate, Tier
from schemas._client_report import ClientReport
from schemas._reports import PrioReport

__all__ = ["AppInfo", "EnvelopeV1", "IngestedEnvelope"]

_ID = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")]
_HASH = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
_SIGNAL = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[a-z][a-z0-9_.]*$")]


class AppInfo(BaseModel):
    """The embedding app, as the app developer names it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: _ID
    version: Annotated[str, Field(min_length=1, max_length=64)]


class EnvelopeV1(BaseModel):
    """Everything one device releases about one aggregation window."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = 1
    envelope_id: UUID
    device_id: _ID
    # Bounds the warehouse can store (BIGINT, INTEGER): a value past them would be
    # acknowledged and then refused by the sink, stalling everyone's batch behind it.
    sequence: int = Field(ge=0, le=2**63 - 1, description="per-device counter, strictly increasing")
    sent_at: AwareDatetime
    window_start: AwareDatetime
    window_end: AwareDatetime
    region: _ID = Field(description="data-residency region the device belongs to")
    policy_hash: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    app: AppInfo
    aggregates: list[Aggregate] = Field(max_length=4096)
    reports: list[PrioReport] = Field(
        default_factory=list,
        max_length=64,
        description="Prio3 reports of the aggregate-model signals (one per task)",
    )
    consent_hash: _HASH | None = Field(
        default=None,
        description="SHA-256 over the device's signed consent records current at release",
    )
    consented_tiers: list[Tier] = Field(
        default_factory=list,
        max_length=len(Tier),
        description="tiers whose consent was granted at release; the ingest refuses "
        "aggregates of any other tier",
    )
    suppressed: dict[_SIGNAL, Annotated[int, Field(ge=1, le=2**31 - 1)]] = Field(
        default_factory=dict,
        max_length=256,
        description="releases of this window withheld by the privacy ledger's caps, by signal",
    )
    client_report: ClientReport | None = Field(
        default=None,
        description="what the device dropped since its last report (optional; added "
        "compatibly to version 1: older devices send none)",
    )

    @model_validator(mode="after")
    def _check_window(self) -> EnvelopeV1:
        if self.window_end <= self.window_start:
            raise ValueError("window_end must be after window_start")
        if len(set(self.consented_tiers)) != len(self.consented_tiers):
            raise ValueError("consented_tiers lists a tier twice")
        if self.consented_tiers and self.consent_hash is None:
            raise ValueError("consented_tiers needs the consent_hash it was read from")
        tasks = [r.task for r in self.reports]
        if len(set(tasks)) != len(tasks):
            raise ValueError("an envelope carries at most one report per task")
        return self


class IngestedEnvelope(BaseModel):
    """What the ingest hands on (to Kafka, or in-process to the sink) after verifying.

    `assurance` says how the signing key is anchored: `software` for a device key with
    no hardware backing, `tpm` for a key the ingest saw certified by an attested TPM.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    envelope: EnvelopeV1
    received_at: datetime
    key_fingerprint: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    assurance: Literal["software", "tpm"]
    batch_start: datetime | None = Field(
        default=None,
        description="start of the aligned policy window the envelope's Prio3 reports "
        "belong to (their batch), stamped by the ingest after checking them; None "
        "without reports",
    )
