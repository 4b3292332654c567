"""The I/O seam to the ingest: `Transport`, with an HTTP and an in-memory version.

`send` returns the ingest's `BatchResult` when the ingest answered about the items
(202: all accepted; other 4xx: some or all rejected, with a reason per item). It raises
`TransportError` when the batch should be sent again later: a network error, a 5xx,
408 (timeout) or 429 (rate limited). Rejected items are never retried: the same bytes
would be rejected again.
"""

from __future__ import annotations

import abc
from collections.abc import Callable

import httpx
from pydantic import ValidationError

from client._errors import TransportError
from schemas import BatchResult, EnvelopeBatch, ItemResult

__all__ = ["HttpTransport", "MemoryTransport", "Transport"]

_RETRYABLE_4XX = frozenset({408, 425, 429})


class Transport(abc.ABC):
    """Sends one batch of sealed envelopes to the ingest."""

    @abc.abstractmethod
    def send(self, batch: EnvelopeBatch) -> BatchResult:
        """Deliver `batch`; raise `TransportError` if it should be retried."""

    def close(self) -> None:  # noqa: B027 - optional hook, most transports hold nothing
        """Release resources (connections); the default holds none."""


class HttpTransport(Transport):
    """POSTs batches as JSON to `{base_url}/v1/envelopes`."""

    def __init__(
        self, base_url: str, timeout: float = 10.0, client: httpx.Client | None = None
    ) -> None:
        self._url = base_url.rstrip("/") + "/v1/envelopes"
        self._owns_client = client is None
        self._client = client if client is not None else httpx.Client(timeout=timeout)
        self._timeout = timeout

    def send(self, batch: EnvelopeBatch) -> BatchResult:
        """POST the batch; see the module docstring for the status handling."""
        try:
            response = self._client.post(
                self._url, json=batch.model_dump(mode="json"), timeout=self._timeout
            )
        except httpx.HTTPError as exc:
            raise TransportError(f"POST {self._url} failed: {exc!r}") from exc
        status = response.status_code
        if status >= 500 or status in _RETRYABLE_4XX:
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

    def close(self) -> None:
        """Close the HTTP client if this transport created it."""
        if self._owns_client:
            self._client.close()


class MemoryTransport(Transport):
    """Hands each batch to `handler` in-process (tests, simulators, embedded ingest)."""

    def __init__(self, handler: Callable[[EnvelopeBatch], BatchResult]) -> None:
        self._handler = handler

    def send(self, batch: EnvelopeBatch) -> BatchResult:
        """Call the handler; its `TransportError` propagates (retry), as over HTTP."""
        return self._handler(batch)


def _uniform_result(n: int, *, accepted: bool, detail: str | None) -> BatchResult:
    status = "accepted" if accepted else "rejected"
    return BatchResult(
        accepted=n if accepted else 0,
        rejected=0 if accepted else n,
        results=[ItemResult(index=i, status=status, detail=detail) for i in range(n)],
    )
