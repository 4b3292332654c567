"""The leader's HTTP seam to the helper (httpx, synchronous: the job runs in a thread).

Errors are converted here, once: a transport failure, a timeout, a 5xx or a 429 is
`HelperUnavailable` (the leader keeps its reports pending and retries on its next run);
a 4xx is `AggregationRefused` with the helper's reason code; a 2xx body that is not the
protocol's is `HelperProtocolError` (also retried: nothing was committed on our side).
"""

from __future__ import annotations

import base64
from typing import TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from ingest.aggregation._errors import AggregationRefused, HelperProtocolError, HelperUnavailable
from ingest.aggregation._wire import (
    AggregationJobRequest,
    AggregationJobResponse,
    CollectionRequest,
    CollectionResponse,
    HelperKeyInfo,
)

__all__ = ["HelperClient"]

_M = TypeVar("_M", bound=BaseModel)


class HelperClient:
    """Calls one helper at `base_url`, authenticated with the leader's bearer token.

    `client` is an `httpx.Client` to reuse (the caller keeps ownership; tests pass one
    with an in-process transport); without it the helper client opens and closes its own.
    """

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        client: httpx.Client | None = None,
        timeout: float = 60.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._headers = {"authorization": f"Bearer {token}"} if token else {}
        self._owned = client is None
        self._client = client if client is not None else httpx.Client(timeout=timeout)

    def close(self) -> None:
        """Close the HTTP client if this object opened it."""
        if self._owned:
            self._client.close()

    def __enter__(self) -> HelperClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def aggregate(self, job: AggregationJobRequest) -> AggregationJobResponse:
        """Send an aggregation job; the answer has one result per report, in order."""
        answer = self._post("/v1/aggregation-jobs", job, AggregationJobResponse)
        if answer.job_id != job.job_id or [r.report_id for r in answer.results] != [
            r.report_id for r in job.reports
        ]:
            raise HelperProtocolError(f"the answer to job {job.job_id} is for other reports")
        return answer

    def collect(self, request: CollectionRequest) -> CollectionResponse:
        """Ask for the batch's noisy aggregate share."""
        answer = self._post("/v1/collections", request, CollectionResponse)
        if (answer.policy_hash, answer.task, answer.region, answer.batch_start) != (
            request.policy_hash,
            request.task,
            request.region,
            request.batch_start,
        ) or answer.report_count != request.report_count:
            raise HelperProtocolError("the collection answer is for another batch")
        return answer

    def public_key(self) -> bytes:
        """The helper's X25519 key (raw 32 bytes), as devices should seal to."""
        info = self._send("GET", "/v1/helper-key", None, HelperKeyInfo)
        return base64.b64decode(info.public_key)

    def _post(self, path: str, body: BaseModel, answer: type[_M]) -> _M:
        return self._send("POST", path, body.model_dump_json().encode(), answer)

    def _send(self, method: str, path: str, content: bytes | None, answer: type[_M]) -> _M:
        headers = dict(self._headers)
        if content is not None:
            headers["content-type"] = "application/json"
        try:
            response = self._client.request(
                method, self.base_url + path, content=content, headers=headers
            )
        except httpx.HTTPError as exc:
            raise HelperUnavailable(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
        if response.status_code >= 500 or response.status_code == 429:
            raise HelperUnavailable(f"{method} {path}: HTTP {response.status_code}")
        if response.status_code >= 400:
            reason, detail = _error_of(response)
            raise AggregationRefused(reason, detail, status_code=response.status_code)
        try:
            return answer.model_validate_json(response.content)
        except ValidationError as exc:
            raise HelperProtocolError(f"{method} {path}: unexpected answer body") from exc


def _error_of(response: httpx.Response) -> tuple[str, str]:
    try:
        body = response.json()
        return str(body["error"]), str(body.get("detail", ""))
    except (ValueError, KeyError, TypeError):
        return f"http_{response.status_code}", response.text[:200]
