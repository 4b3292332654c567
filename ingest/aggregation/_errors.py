"""Errors of secure aggregation, in the ingest's one error tree.

    IngestError
    ├── RequestRejected
    │   └── AggregationRefused      4xx <reason>: the helper refuses a whole job or
    │                               collection (unknown_task, batch_collected, ...)
    └── HelperUnavailable           the leader could not get an answer from the helper
        └── HelperProtocolError     the helper answered something the protocol forbids

Per-report refusals are not errors: they travel in an aggregation job's answer as
`ReportReason`s. The leader treats `HelperUnavailable` as "try again on the next run"
(its reports stay pending); `AggregationRefused` from the helper is a decision.
"""

from __future__ import annotations

from ingest._errors import IngestError, RequestRejected

__all__ = ["AggregationRefused", "HelperProtocolError", "HelperUnavailable"]


class AggregationRefused(RequestRejected):
    """A whole request refused with a reason code (always 4xx)."""

    def __init__(self, reason: str, detail: str, *, status_code: int = 400) -> None:
        super().__init__(detail)
        self.reason = reason
        self.status_code = status_code


class HelperUnavailable(IngestError):
    """No usable answer from the helper (down, timed out, 5xx): retry later."""

    status_code = 503
    reason = "helper_unavailable"


class HelperProtocolError(HelperUnavailable):
    """The helper answered, but not as the protocol says (wrong reports, bad body)."""

    reason = "helper_protocol_error"
