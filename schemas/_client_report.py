"""The client report: what a device dropped, by reason, since its last report.

As Sentry's client reports do, the device counts every measurement, release or envelope
it dropped (invalid input, a full spool, a rejection by the ingest, a fallback from its
TPM key) and tells the ingest later, in the next envelope it sends: the report is part
of the signed envelope, so it is as authentic as the envelope's data. Counts are
operational (what the client library did), never derived from recorded values; reasons
that would describe the user's content are not reported at all (the client decides,
see `client._client_report`).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

__all__ = ["MAX_CLIENT_REPORT_REASONS", "ClientReport"]

MAX_CLIENT_REPORT_REASONS = 64

_REASON = Annotated[
    str, Field(min_length=1, max_length=96, pattern=r"^[a-z0-9_]+(:[A-Za-z0-9_.-]+)?$")
]


class ClientReport(BaseModel):
    """Drops by reason (`client.DropReason` values, `rejected:<RejectReason>`,
    `tpm_unattested:<reason>`, ...) counted since the previous report."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    since: AwareDatetime | None = Field(
        default=None, description="when the previous report was accepted; None for the first"
    )
    counts: dict[_REASON, Annotated[int, Field(ge=1, le=2**31 - 1)]] = Field(
        min_length=1, max_length=MAX_CLIENT_REPORT_REASONS
    )
