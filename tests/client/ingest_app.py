"""The real ingest app (`ingest.create_app`) in-process, behind the client's own
`HttpTransport`.

The app runs on an event loop of its own thread (its lifespan through
`tests.ingest.kit.asgi_client`), and the client's synchronous httpx client reaches it
through a `MockTransport` that forwards each request. Every answer carries a `Date`
from the ingest's clock, as uvicorn stamps one from the system clock; `online = False`
makes every request fail as a network error would (`head_fails`, only `HEAD`s).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
from nacl.public import PrivateKey

from client import HttpTransport, Telemetry, TelemetryConfig
from ingest import IngestSettings, InMemoryEnvelopeBus, create_app, write_private_key
from policies import PILOT_POLICY_PATH, load_policy
from schemas import AppInfo, EnvelopeV1, IngestedEnvelope, Tier
from tests.ingest.kit import SERVED_POLICIES, asgi_client

__all__ = ["PILOT", "REGION", "T0", "IngestApp", "Time", "not_delivered", "pilot_device"]

REGION = "eu-test"
PILOT = load_policy(PILOT_POLICY_PATH)
"""Local model, one-day windows: served in full by `IngestApp`, no helper needed."""
T0 = datetime(2026, 3, 2, tzinfo=UTC)
"""Aligned to the pilot policy's one-day windows."""

_T = TypeVar("_T")


class IngestApp:
    """The ingest app for `REGION`, serving the default and pilot policies, whose
    envelope intake reads `clock` (receipt time, skew, budget day)."""

    def __init__(self, tmp_path: Path, clock: Callable[[], datetime]) -> None:
        self.clock = clock
        self.key: PrivateKey = write_private_key(tmp_path / "ingest.key")
        self.bus = InMemoryEnvelopeBus()
        settings = IngestSettings(
            policy_paths=SERVED_POLICIES,
            region=REGION,
            private_key_path=tmp_path / "ingest.key",
            state_dir=tmp_path / "ingest-state",
        )
        self.app = create_app(settings, bus=self.bus, clock=clock)
        self.online = True
        self.head_fails = False
        """While True, a `HEAD` (the client asking for the ingest's time) fails."""
        self.requests: list[str] = []
        """`METHOD path` of every request that reached the app."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._stack = AsyncExitStack()
        self._client: httpx.AsyncClient = self._run(
            self._stack.enter_async_context(asgi_client(self.app))
        )

    @property
    def public_key(self) -> bytes:
        """The ingest's sealing key, as a client is configured with it."""
        return bytes(self.key.public_key)

    def transport(self) -> HttpTransport:
        """A client transport to this ingest (a fresh httpx client)."""
        return HttpTransport(
            "http://ingest", client=httpx.Client(transport=httpx.MockTransport(self._forward))
        )

    def stored(self) -> list[EnvelopeV1]:
        """The envelopes the ingest accepted, in the order it published them."""
        return [e.envelope for e in self.bus.published if isinstance(e, IngestedEnvelope)]

    def close(self) -> None:
        """End the app's lifespan and its loop's thread."""
        self._run(self._stack.aclose())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5.0)
        self._loop.close()

    def _run(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(30.0)

    def _forward(self, request: httpx.Request) -> httpx.Response:
        if not self.online or (self.head_fails and request.method == "HEAD"):
            raise httpx.ConnectError("the device is offline", request=request)
        self.requests.append(f"{request.method} {request.url.path}")
        answer = self._run(
            self._client.request(
                request.method,
                request.url.path,
                content=request.content,
                headers={"content-type": request.headers.get("content-type", "")},
            )
        )
        headers = {k: v for k, v in answer.headers.items() if k in {"content-type", "retry-after"}}
        headers["date"] = format_datetime(self.clock(), usegmt=True)
        return httpx.Response(answer.status_code, headers=headers, content=answer.content)


class Time:
    """Real time for a test: the ingest's clock, the device's wall clock (`ahead` of
    it) and the device's monotonic clock move together."""

    def __init__(self) -> None:
        self.now = T0
        self.ahead = timedelta(0)

    def ingest(self) -> datetime:
        return self.now

    def device(self) -> datetime:
        return self.now + self.ahead

    def monotonic(self) -> float:
        return (self.now - T0).total_seconds() + 1_000.0


def pilot_device(server: IngestApp, time: Time, state_dir: Path) -> Telemetry:
    """A manual-mode client of `server` under the pilot policy, on `time`'s clocks,
    with health and performance consented; one send attempt per flush."""
    qw = Telemetry(
        TelemetryConfig(
            app=AppInfo(name="demo-app", version="1.0"),
            region=REGION,
            policy=PILOT,
            ingest_public_key=server.public_key,
            transport=server.transport(),
            state_dir=state_dir,
            clock=time.device,
            monotonic=time.monotonic,
            mode="manual",
            retry_backoff=0.0,
            max_attempts=1,
        )
    )
    qw.grant_consent(Tier.HEALTH)
    qw.grant_consent(Tier.PERFORMANCE)
    return qw


def not_delivered(qw: Telemetry) -> dict[str, int]:
    """Counts of envelopes the client gave up on (deferrals are not among them)."""
    return {
        k: n
        for k, n in qw.dropped().items()
        if k.startswith(("rejected:", "expired")) or k in {"queue_full", "seal_failed"}
    }
