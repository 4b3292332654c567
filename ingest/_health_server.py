"""A tiny HTTP health endpoint for processes that serve nothing else (the Kafka sink).

The standard library's threading HTTP server, in a daemon thread, as prometheus_client's
`start_http_server` does: `GET /healthz` runs the report coroutine on the process's event
loop and answers its JSON, 200 when `status` is "ok", else 503. Nothing else is served.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable, Coroutine
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pydantic import BaseModel

__all__ = ["HealthServer"]

log = logging.getLogger("quietwire.ingest.health")

Report = Callable[[], Coroutine[Any, Any, BaseModel]]


class HealthServer:
    """Serves `report()` at `GET /healthz` on `host:port` until `close()`."""

    def __init__(
        self,
        report: Report,
        loop: asyncio.AbstractEventLoop,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        timeout: float = 5.0,
    ) -> None:
        handler = _handler(report, loop, timeout)
        self._server = ThreadingHTTPServer((host, port), handler)  # raises OSError if taken
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="health-server", daemon=True
        )
        self._thread.start()

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        return int(self._server.server_address[1])

    def close(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def _handler(
    report: Report, loop: asyncio.AbstractEventLoop, timeout: float
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] != "/healthz":
                self._answer(404, b'{"error": "not_found"}')
                return
            try:
                body = asyncio.run_coroutine_threadsafe(report(), loop).result(timeout)
            except Exception as exc:  # the loop is stuck or gone: that is the answer
                detail = f"no report: {type(exc).__name__}: {exc}"
                self._answer(503, json.dumps({"status": "unavailable", "detail": detail}).encode())
                return
            status = 200 if getattr(body, "status", None) == "ok" else 503
            self._answer(status, body.model_dump_json().encode())

        def _answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("health: " + format, *args)

    return Handler
