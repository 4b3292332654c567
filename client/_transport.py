"""The I/O seam to the ingest: `Transport`, with an HTTP and an in-memory version.

`send` returns the ingest's `BatchResult` when the ingest answered about the items
(202: all accepted; 422 with a `BatchResult`: some or all rejected, with a reason per
item; 400 or 422 without one: the batch is invalid, every item rejected). Any other
answer raises `TransportError`, and the batch is sent again later: a network error, a
redirect, a 5xx, and every other 4xx (401, 403, 404, 408, 409, 413, 429, ...), which
come from proxies, gateways and rate limits, not from a judgement of the envelopes;
413 carries `status_code` 413 so the sender can split the batch. The sender decides
which per-item rejections a re-signature can fix (`client._outbox`).

`send_deletion` posts one signed deletion request to `/v1/deletion-requests`: it returns
the ingest's `DeletionReceipt` once the request is recorded, None if the ingest refused
it (400 or 422: it would be refused again), and raises `TransportError` to retry later
(as for batches, any other answer: a revocation must not be lost to a proxy).

`server_time` is the `Date` of the ingest's last answer: the client's budget clock
(`client._clock`) keeps its windows and send times on the ingest's clock with it.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable
from datetime import datetime
from email.utils import parsedate_to_datetime

import httpx
from pydantic import ValidationError

from client._errors import TransportError
from client._realtime import suspend_aware_monotonic
from schemas import (
    BatchResult,
    DeletionReceipt,
    EnvelopeBatch,
    ItemResult,
    SignedDeletionRequest,
)

__all__ = ["HttpTransport", "MemoryTransport", "Transport"]

_INVALID_BATCH_4XX = frozenset({400, 422})
_CLOCK_SKEW = "clock_skew"


def _error_reason(response: httpx.Response) -> str | None:
    """The `error` of the ingest's error body (`{"error": reason, ...}`), if it has one."""
    try:
        body = response.json()
    except ValueError:
        return None
    reason = body.get("error") if isinstance(body, dict) else None
    return reason if isinstance(reason, str) else None


"""The only whole-request answers that judge what was sent: sending it again fails."""


class Transport(abc.ABC):
    """Sends one batch of sealed envelopes to the ingest."""

    @abc.abstractmethod
    def send(self, batch: EnvelopeBatch) -> BatchResult:
        """Deliver `batch`; raise `TransportError` if it should be retried."""

    def send_deletion(self, request: SignedDeletionRequest) -> DeletionReceipt | None:
        """Deliver a deletion request; None if refused for good, `TransportError` to retry.

        The default cannot deliver one, so the request stays pending (retried later).
        """
        raise TransportError(f"{type(self).__name__} cannot send deletion requests")

    def close(self) -> None:  # noqa: B027 - optional hook, most transports hold nothing
        """Release resources (connections); the default holds none."""

    def server_time(self) -> tuple[datetime, float] | None:
        """The ingest's time from its last answer (`Date`), with the reading of
        `client._realtime.suspend_aware_monotonic` taken when that request was sent;
        None if not known (the default)."""
        return None

    def probe_time(self) -> None:  # noqa: B027 - optional hook
        """Ask the ingest for its time without sending anything (`server_time` then
        has it); never raises. The default knows no time."""


class HttpTransport(Transport):
    """POSTs batches as JSON to `{base_url}/v1/envelopes`."""

    def __init__(
        self, base_url: str, timeout: float = 10.0, client: httpx.Client | None = None
    ) -> None:
        self._url = base_url.rstrip("/") + "/v1/envelopes"
        self._deletion_url = base_url.rstrip("/") + "/v1/deletion-requests"
        self._owns_client = client is None
        self._client = client if client is not None else httpx.Client(timeout=timeout)
        self._timeout = timeout
        self._server_time: tuple[datetime, float] | None = None
        self._base = base_url.rstrip("/") + "/"

    def server_time(self) -> tuple[datetime, float] | None:
        """The `Date` of the ingest's last answer and when its request was sent."""
        return self._server_time

    def probe_time(self) -> None:
        """HEAD the ingest's base URL: any answer's `Date` is its time."""
        with contextlib.suppress(httpx.HTTPError):
            sent = suspend_aware_monotonic()
            self._note_date(self._client.head(self._base, timeout=self._timeout), sent)

    def _post(self, url: str, body: object) -> httpx.Response:
        sent = suspend_aware_monotonic()
        response = self._client.post(url, json=body, timeout=self._timeout)
        self._note_date(response, sent)
        return response

    def _note_date(self, response: httpx.Response, sent: float) -> None:
        # No (valid) Date: the client keeps its last estimate.
        with contextlib.suppress(KeyError, TypeError, ValueError):
            date = parsedate_to_datetime(response.headers["date"])
            if date.tzinfo is not None:
                self._server_time = (date, sent)

    def send(self, batch: EnvelopeBatch) -> BatchResult:
        """POST the batch; see the module docstring for the status handling."""
        try:
            response = self._post(self._url, batch.model_dump(mode="json"))
        except httpx.HTTPError as exc:
            raise TransportError(f"POST {self._url} failed: {exc!r}") from exc
        status = response.status_code
        if status >= 500 or (400 <= status < 500 and status not in _INVALID_BATCH_4XX):
            raise TransportError(f"ingest answered {status}", status_code=status)
        try:
            return BatchResult.model_validate_json(response.content)
        except ValidationError:
            pass
        if 200 <= status < 300:
            # Accepted, but the body is not a BatchResult: nothing to retry or count.
            return _uniform_result(len(batch.envelopes), accepted=True, detail=None)
        if 300 <= status < 400:
            raise TransportError(f"ingest answered a redirect ({status})", status_code=status)
        return _uniform_result(len(batch.envelopes), accepted=False, detail=f"http_{status}")

    def send_deletion(self, request: SignedDeletionRequest) -> DeletionReceipt | None:
        """POST the signed request; 202 is recorded, 400/422 refused, the rest retried.

        Except `clock_skew`: the request's time is ahead of the ingest's clock (this
        device's clock runs fast), and the same request is accepted once the ingest's
        time has caught up. A revocation must not be lost to a clock, so that refusal
        is retried like a 503 (`TransportError`), and the request stays pending."""
        try:
            response = self._post(self._deletion_url, request.model_dump(mode="json"))
        except httpx.HTTPError as exc:
            raise TransportError(f"POST {self._deletion_url} failed: {exc!r}") from exc
        status = response.status_code
        if status >= 300 and status not in _INVALID_BATCH_4XX:
            raise TransportError(f"ingest answered {status}", status_code=status)
        if status in _INVALID_BATCH_4XX and _error_reason(response) == _CLOCK_SKEW:
            raise TransportError(
                "the deletion request is ahead of the ingest's clock; kept and sent again",
                status_code=status,
            )
        if 200 <= status < 300:
            try:
                return DeletionReceipt.model_validate_json(response.content)
            except ValidationError as exc:
                raise TransportError(f"ingest answered {status} without a receipt") from exc
        return None

    def close(self) -> None:
        """Close the HTTP client if this transport created it."""
        if self._owns_client:
            self._client.close()


class MemoryTransport(Transport):
    """Hands each batch to `handler` in-process (tests, simulators, embedded ingest)."""

    def __init__(
        self,
        handler: Callable[[EnvelopeBatch], BatchResult],
        deletion_handler: Callable[[SignedDeletionRequest], DeletionReceipt | None] | None = None,
    ) -> None:
        self._handler = handler
        self._deletion_handler = deletion_handler

    def send(self, batch: EnvelopeBatch) -> BatchResult:
        """Call the handler; its `TransportError` propagates (retry), as over HTTP."""
        return self._handler(batch)

    def send_deletion(self, request: SignedDeletionRequest) -> DeletionReceipt | None:
        """Call the deletion handler (without one: `TransportError`, kept pending)."""
        if self._deletion_handler is None:
            return super().send_deletion(request)
        return self._deletion_handler(request)


def _uniform_result(n: int, *, accepted: bool, detail: str | None) -> BatchResult:
    status = "accepted" if accepted else "rejected"
    return BatchResult(
        accepted=n if accepted else 0,
        rejected=0 if accepted else n,
        results=[ItemResult(index=i, status=status, detail=detail) for i in range(n)],
    )
