"""The ingest package's one error tree.

    IngestError                     root; carries a machine-readable `reason` and an HTTP status
    ├── ConfigurationError          settings refused at start-up (never an HTTP answer)
    ├── RequestRejected             the client's mistake: always a 4xx
    │   ├── BodyTooLarge            413 batch_too_large: the body exceeds the byte limit
    │   ├── TooManyItems            413 batch_too_large: more items than MAX_BATCH
    │   ├── MalformedBody           400/422 malformed_body: not JSON, or not an EnvelopeBatch
    │   ├── DeletionRejected        422 <RejectReason>: a deletion request failed verification
    │   └── RateLimited             429 rate_limited: too many requests from this source
    ├── BusUnavailable              503 bus_unavailable: the bus did not acknowledge; retry later
    ├── LedgerUnavailable           503 ledger_unavailable: the device ledger did not commit
    └── AuditUnavailable            503 audit_unavailable: the audit log did not commit

Third-party errors (aiokafka, DuckDB, PyNaCl) are converted at the boundary with
``raise ... from exc``; one handler in `ingest._app` turns any `IngestError` into
``{"error": reason, "detail": ...}``.
"""

from __future__ import annotations

from schemas import RejectReason

__all__ = [
    "BUS_UNAVAILABLE",
    "AuditUnavailable",
    "BodyTooLarge",
    "BusUnavailable",
    "ConfigurationError",
    "DeletionRejected",
    "IngestError",
    "LedgerUnavailable",
    "MalformedBody",
    "RateLimited",
    "RequestRejected",
    "TooManyItems",
]

BUS_UNAVAILABLE = "bus_unavailable"
"""Reason of a 503: a server condition, so not one of the client-facing `RejectReason`s."""


class IngestError(Exception):
    """Root of every error the ingest raises on purpose."""

    status_code: int = 500
    reason: str = "internal_error"

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(detail)


class ConfigurationError(IngestError):
    """Settings that the ingest refuses to run with (insecure or inconsistent)."""

    reason = "configuration_error"


class RequestRejected(IngestError):
    """The whole request is refused because of the client's input: always 4xx."""

    status_code = 400
    reason = RejectReason.MALFORMED_BODY.value


class BodyTooLarge(RequestRejected):
    """The request body exceeds the configured byte limit."""

    status_code = 413
    reason = RejectReason.BATCH_TOO_LARGE.value


class TooManyItems(RequestRejected):
    """The batch holds more items than the ingest accepts in one request."""

    status_code = 413
    reason = RejectReason.BATCH_TOO_LARGE.value


class MalformedBody(RequestRejected):
    """The body is not JSON (400) or not an `EnvelopeBatch` (422)."""

    reason = RejectReason.MALFORMED_BODY.value

    def __init__(self, detail: str, *, status_code: int = 400) -> None:
        super().__init__(detail)
        self.status_code = status_code


class DeletionRejected(RequestRejected):
    """A deletion request failed verification; `reason` is a `RejectReason` value.

    `device_id` is set when the key names a device (for the audit log), else None.
    """

    status_code = 422

    def __init__(self, reason: RejectReason, detail: str, *, device_id: str | None = None) -> None:
        super().__init__(detail)
        self.reason = reason.value
        self.device_id = device_id


class BusUnavailable(IngestError):
    """The envelope bus (Kafka, or the embedded sink) did not make a batch durable."""

    status_code = 503
    reason = BUS_UNAVAILABLE


class LedgerUnavailable(IngestError):
    """The device ledger (admission state, epsilon spend) could not be written: nothing
    of the batch was admitted or charged; the device retries later."""

    status_code = 503
    reason = "ledger_unavailable"


class AuditUnavailable(IngestError):
    """The audit log could not record the request's decisions (a full disk, say). What
    was accepted is durable on the bus all the same: the device's retry is answered
    `duplicate` (or published again, uncharged) and its decisions audited then."""

    status_code = 503
    reason = "audit_unavailable"


class RateLimited(RequestRejected):
    """429 rate_limited: this source sent more requests than its budget allows;
    `retry_after` (seconds) is when its next request would be admitted."""

    status_code = 429
    reason = "rate_limited"

    def __init__(self, detail: str, retry_after: float) -> None:
        super().__init__(detail)
        self.retry_after = retry_after
