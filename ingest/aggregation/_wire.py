"""The leader-helper protocol: HTTP bodies of aggregation jobs and collections.

Shaped after DAP (draft-ietf-ppm-dap): the leader sends an *aggregation job* (a batch's
reports with its own verifier shares), the helper answers per report `continue` (with
the verifier message, so the leader can finish) or `rejected` (with a reason). Later
the leader asks for the helper's noisy aggregate share of a *batch* (a *collection*),
proving with a count and a checksum over the report ids that both sides summed the
same reports. Prio3 with two aggregators verifies in one round, so a job is one
request and one answer.

Bytes are raw in Python and standard base64 in JSON, both ways.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal, Self

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from schemas import MAX_REPORT_SHARE_BYTES, REPORT_ID_BYTES, TaskId

__all__ = [
    "CHECKSUM_BYTES",
    "MAX_JOB_REPORTS",
    "AggregationJobRequest",
    "AggregationJobResponse",
    "CollectionRequest",
    "CollectionResponse",
    "HelperKeyInfo",
    "ReportInit",
    "ReportReason",
    "ReportResult",
]

CHECKSUM_BYTES = 32
MAX_JOB_REPORTS = 10_000
"""Hard ceiling of reports per job in the wire format; the helper's setting is lower."""

_CONFIG = ConfigDict(frozen=True, extra="forbid", ser_json_bytes="base64", val_json_bytes="base64")
_REPORT_ID = Annotated[bytes, Field(min_length=REPORT_ID_BYTES, max_length=REPORT_ID_BYTES)]
_SHARE = Annotated[bytes, Field(max_length=MAX_REPORT_SHARE_BYTES)]
_POLICY_HASH = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
_REGION = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")]
_JOB_ID = Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]


class ReportReason(StrEnum):
    """Why an aggregator refused one report (each counted and audited)."""

    SHARE_BINDING_MISMATCH = "share_binding_mismatch"
    """The sealed helper share names another policy, task, report or batch."""
    REPORT_REPLAYED = "report_replayed"
    """The report id was seen before (or twice in one job)."""
    REPORT_DECODE_FAILED = "report_decode_failed"
    """A share or the sealed box does not open or decode."""
    REPORT_VERIFY_FAILED = "report_verify_failed"
    """The validity proof failed: out of bounds, or tampered with."""
    BATCH_COLLECTED = "batch_collected"
    """Leader only: the report arrived after its batch was collected."""
    UNKNOWN_TASK = "unknown_task"
    """Leader only: the report's policy does not define its task."""


class ReportInit(BaseModel):
    """One report of a job: what the helper needs to verify it with the leader."""

    model_config = _CONFIG

    report_id: _REPORT_ID
    public_share: _SHARE
    helper_share: _SHARE = Field(description="the device's sealed HelperShareV1, relayed")
    leader_verifier_share: _SHARE


class _BatchFields(BaseModel):
    model_config = _CONFIG

    policy_hash: _POLICY_HASH
    task: TaskId
    region: _REGION
    batch_start: AwareDatetime


class AggregationJobRequest(_BatchFields):
    """A batch's reports, verified by the leader, for the helper to verify and sum.

    `job_id` is derived from the batch and its report ids, so a retry after a lost
    answer is the same job and the helper answers it again without counting twice.
    """

    job_id: _JOB_ID
    reports: list[ReportInit] = Field(min_length=1, max_length=MAX_JOB_REPORTS)


class ReportResult(BaseModel):
    """The helper's verdict on one report."""

    model_config = _CONFIG

    report_id: _REPORT_ID
    status: Literal["continue", "rejected"]
    message: _SHARE | None = Field(
        default=None, description="the verifier message (continue): the leader finishes with it"
    )
    reason: ReportReason | None = None

    @model_validator(mode="after")
    def _check(self) -> Self:
        if (self.status == "continue") != (self.message is not None):
            raise ValueError("a continued report carries the verifier message, a rejected one not")
        if (self.status == "rejected") != (self.reason is not None):
            raise ValueError("a rejected report carries its reason, a continued one not")
        return self


class AggregationJobResponse(BaseModel):
    """One result per report of the job, in the job's order."""

    model_config = _CONFIG

    job_id: _JOB_ID
    results: list[ReportResult] = Field(max_length=MAX_JOB_REPORTS)


class CollectionRequest(_BatchFields):
    """Ask for the helper's noisy aggregate share of a closed batch.

    `report_count` and `checksum` (XOR of SHA-256 of each aggregated report id) are the
    leader's: the helper refuses unless its own batch has exactly these reports.
    """

    report_count: int = Field(ge=0)
    checksum: Annotated[bytes, Field(min_length=CHECKSUM_BYTES, max_length=CHECKSUM_BYTES)]


class CollectionResponse(_BatchFields):
    """The helper's aggregate share with its DP noise added (drawn once, stored)."""

    report_count: int = Field(ge=0)
    aggregate_share: _SHARE
    noise_mechanism: Literal["discrete_laplace"] = "discrete_laplace"
    noise_scale: float = Field(ge=0.0, description="per-entry scale of the helper's draw, in units")


class HelperKeyInfo(BaseModel):
    """The key devices seal helper shares to (NaCl SealedBox, X25519)."""

    public_key: str
    alg: Literal["x25519-xsalsa20-poly1305-sealedbox"] = "x25519-xsalsa20-poly1305-sealedbox"
