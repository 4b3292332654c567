"""Request body limits, enforced while the body arrives (an ASGI middleware).

Every HTTP request body is read here, before any route (or FastAPI body parameter)
sees it. A declared ``Content-Length`` over the route's limit is refused at once, with
nothing read; a body without one (chunked) is counted as its chunks arrive and refused
as soon as the count passes the limit. Only a body within its limit is handed on,
replayed to the app as one message: no request can make the ingest hold more than its
route's limit, whatever it sends. A refusal is 413 ``batch_too_large`` (the reason
clients already split batches on) in the usual ``{"error", "detail"}`` body.
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ingest._errors import BodyTooLarge

__all__ = ["MAX_REQUEST_BYTES", "BodyLimits", "read_within"]

MAX_REQUEST_BYTES = 64 * 1024
"""The limit of every route not given its own: enrollment, attestation and revocation
bodies are a few KiB (TPM structures and an EK certificate), unknown paths none."""


class BodyLimits:
    """ASGI middleware: per-path body limits (`limits`, exact path), `default` elsewhere."""

    def __init__(self, app: ASGIApp, *, limits: Mapping[str, int], default: int) -> None:
        self.app = app
        self._limits = dict(limits)
        self._default = default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self._limits.get(scope["path"], self._default)
        body = await read_within(scope, receive, limit)
        if body is None:  # the client went away mid-body: nobody to answer
            return
        if isinstance(body, BodyTooLarge):
            await _refuse(body, scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)


async def read_within(scope: Scope, receive: Receive, limit: int) -> bytes | BodyTooLarge | None:
    """The whole body if it stays within `limit`, else the refusal (read no further);
    None if the client disconnected before its body ended."""
    route = f"{scope['method']} {scope['path']}"
    declared = _content_length(scope)
    if declared is not None and declared > limit:
        return BodyTooLarge(f"body is {declared} bytes; the limit of {route} is {limit}")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # http.disconnect
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return BodyTooLarge(f"body exceeds the limit of {route}, {limit} bytes")
        if chunk:
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that yields `body` once, then defers to the server's (disconnects)."""
    pending = True

    async def replay() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _refuse(error: BodyTooLarge, scope: Scope, receive: Receive, send: Send) -> None:
    # The server closes the connection after this answer if the body was not read to its
    # end (uvicorn does), so the rest of an oversized body is never buffered either.
    response = JSONResponse(
        {"error": error.reason, "detail": error.detail}, status_code=error.status_code
    )
    await response(scope, receive, send)
