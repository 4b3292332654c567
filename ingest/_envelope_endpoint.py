"""`POST /v1/envelopes` served straight from ASGI: the hot path without the framework.

Every device's every window arrives on this one route, so its fixed cost per request
is the ingest's throughput. Through FastAPI's routing a request also passes
dependency solving, the app's other middleware and response classes: a bare GET costs
about 200 µs of server CPU that way, where a request answered by this middleware with a
canned body costs about 50 µs (HTTP parsing, uvicorn's and Starlette's outer layers:
FastAPI's error, telemetry and body-limit middleware wrap every user middleware).
`EnvelopeEndpoint` is the outermost of the app's own middleware: it answers `POST
/v1/envelopes` itself, with the same steps the route takes (`answer_batch`: the body
bounded while it arrives, items counted before parsing, the intake, the `BatchResult`)
and the same error bodies (`error_answer`), and hands every other request on. (Answering
before FastAPI's own layers too, from a subclass's `__call__`, measured no different in
an A/B of eight rounds.)

The FastAPI route stays: it documents the endpoint in the OpenAPI schema and serves it
wherever this middleware is not installed, by calling the same `answer_batch`.
"""

from __future__ import annotations

import json
import math
from typing import cast

from starlette.types import ASGIApp, Receive, Scope, Send

from ingest._body import read_within
from ingest._errors import IngestError, RateLimited
from ingest._routes import IngestState, answer_batch

__all__ = ["ENVELOPES_PATH", "RETRY_AFTER_SECONDS", "EnvelopeEndpoint", "error_answer"]

ENVELOPES_PATH = "/v1/envelopes"
RETRY_AFTER_SECONDS = 5
"""`Retry-After` of a 503: the bus or ledger is down, so a device should not hammer it."""

_JSON = (b"content-type", b"application/json")


def error_answer(exc: IngestError) -> tuple[int, dict[str, object], dict[str, str]]:
    """(status, body, headers) of the answer to `exc`: ``{"error": reason, "detail"}``,
    with `Retry-After` on a 503 and on a 429 (when the source's next token comes)."""
    headers: dict[str, str] = {}
    if exc.status_code == 503:
        headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    if isinstance(exc, RateLimited):
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    return exc.status_code, {"error": exc.reason, "detail": exc.detail}, headers


class EnvelopeEndpoint:
    """ASGI middleware answering `POST /v1/envelopes` (see the module docstring);
    `limit` is the route's body limit in bytes."""

    def __init__(self, app: ASGIApp, *, limit: int) -> None:
        self.app = app
        self._limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["path"] != ENVELOPES_PATH
            or scope["method"] != "POST"
            or "ingest" not in scope.get("state", ())
        ):
            await self.app(scope, receive, send)
            return
        state = cast(IngestState, scope["state"]["ingest"])
        headers: dict[str, str] = {}
        try:
            body = await read_within(scope, receive, self._limit)
            if body is None:  # the client went away mid-body: nobody to answer
                return
            if isinstance(body, IngestError):
                raise body
            status, payload = await answer_batch(body, state)
        except IngestError as exc:
            status, error, headers = error_answer(exc)
            payload = json.dumps(error, separators=(",", ":")).encode()
        raw = [_JSON, (b"content-length", str(len(payload)).encode())]
        raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": payload})
