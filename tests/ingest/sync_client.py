"""A synchronous client of an ASGI app whose lifespan and requests run on one event
loop: hypothesis drives synchronous tests, the ingest is async."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from nacl.public import PublicKey

from tests.ingest.kit import asgi_client

__all__ = ["SyncClient", "sync_client"]


class SyncClient:
    """Requests to one running app, each run to completion on the app's loop."""

    def __init__(self, runner: asyncio.Runner, client: httpx.AsyncClient) -> None:
        self._runner = runner
        self._client = client
        key = self.request("GET", "/v1/ingest-key").json()["public_key"]
        self.ingest_key = PublicKey(base64.b64decode(key))

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """One request; `kwargs` as for `httpx.AsyncClient.request`."""
        return self._runner.run(self._client.request(method, url, **kwargs))


@contextmanager
def sync_client(app: Any) -> Iterator[SyncClient]:
    """`app` running (its lifespan entered) for a synchronous test's requests."""
    with asyncio.Runner() as runner:
        session = asgi_client(app)
        client = runner.run(session.__aenter__())
        try:
            yield SyncClient(runner, client)
        finally:
            runner.run(session.__aexit__(None, None, None))
