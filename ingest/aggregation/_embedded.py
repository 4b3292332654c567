"""A helper served in-process on loopback, for the demo and tests on real HTTP.

The leader talks to it exactly as to a remote helper (httpx over TCP), so the embedded
pipeline runs the production protocol; only the process is shared.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import uvicorn

from ingest.aggregation._helper_app import create_helper_app
from ingest.aggregation._noise import NoiseSource
from ingest.aggregation._settings import HelperSettings
from policies import Policy

__all__ = ["serve_helper"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def serve_helper(
    settings: HelperSettings,
    *,
    policies: Sequence[Policy] | None = None,
    noise: NoiseSource | None = None,
    port: int | None = None,
) -> Iterator[str]:
    """Run the helper app under uvicorn on 127.0.0.1 in a thread; yields its base URL.

    `port` pins the port (a test restarting "the same" helper); default: a free one.
    """
    app = create_helper_app(settings, policies=policies, noise=noise)
    port = port if port is not None else _free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, name="quietwire-helper", daemon=True)
    thread.start()
    ready = threading.Event()
    try:
        # uvicorn sets `started` once it listens; poll it (it has no event to wait on).
        for _ in range(600):
            if server.started:
                break
            if not thread.is_alive():
                raise RuntimeError("the helper server failed to start")
            ready.wait(0.05)
        else:
            raise RuntimeError("the helper server did not start within 30 s")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
