"""Prio3 reports: an aggregate-model signal's window, as two secret shares.

A device splits each aggregate task's measurement (see `policies.aggregation_tasks`)
with Prio3 into a public share, a leader share and a helper share. The report rides in
the envelope (signed by the device, sealed to the ingest, which is the leader); the
helper share inside it is sealed again, to the helper's key, with the report's identity
(`HelperShareV1`), so the leader relays it without being able to read it or to move it
to another report, task or batch. Neither share alone says anything about the values.

`report_id` is DAP's report id and the VDAF nonce (16 random bytes).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from schemas._aggregates import Tier

__all__ = [
    "MAX_REPORT_SHARE_BYTES",
    "REPORT_ID_BYTES",
    "HelperShareV1",
    "PrioReport",
    "TaskId",
    "report_batch_start",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

REPORT_ID_BYTES = 16
MAX_REPORT_SHARE_BYTES = 256 * 1024
"""Upper bound on any one encoded share; the ingest checks exact sizes per task."""

TaskId = Annotated[
    str,
    Field(
        min_length=3,
        max_length=160,
        pattern=r"^[a-z][a-z0-9_.]*/(cells|total|buckets|counts|sums|total_events|total_sum)$",
        description="`signal/part` of the policy's aggregation task",
    ),
]
_SHARE = Annotated[bytes, Field(max_length=MAX_REPORT_SHARE_BYTES)]
_REPORT_ID = Annotated[bytes, Field(min_length=REPORT_ID_BYTES, max_length=REPORT_ID_BYTES)]
# Bytes are raw in Python and standard base64 in JSON, both ways.
_BYTES_AS_BASE64 = ConfigDict(
    frozen=True, extra="forbid", ser_json_bytes="base64", val_json_bytes="base64"
)


class PrioReport(BaseModel):
    """One Prio3 report of one aggregation task for the envelope's window."""

    model_config = _BYTES_AS_BASE64

    task: TaskId
    tier: Tier
    report_id: _REPORT_ID
    public_share: _SHARE
    leader_share: _SHARE = Field(description="the leader's (ingest's) input share")
    helper_share: _SHARE = Field(
        description="a NaCl sealed box to the helper's key holding a HelperShareV1"
    )


class HelperShareV1(BaseModel):
    """What a device seals to the helper: its input share and the report it belongs to.

    The helper refuses a share whose identity differs from the report the leader
    presents it with (a leader replaying a share into another report, task or batch).
    """

    model_config = _BYTES_AS_BASE64

    version: Literal[1] = 1
    policy_hash: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    task: TaskId
    report_id: _REPORT_ID
    window_start: AwareDatetime
    share: _SHARE


def report_batch_start(window_start: datetime, window_seconds: int) -> datetime:
    """The aligned window (the batch) a report of a window starting at `window_start`
    belongs to. Kept here so client, leader and helper agree."""
    elapsed = (window_start - _EPOCH) // timedelta(seconds=window_seconds)
    return _EPOCH + timedelta(seconds=window_seconds * elapsed)
