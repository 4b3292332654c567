"""The load the ingest benchmark sends: real sealed, signed envelopes over real HTTP.

Envelopes are made with the ingest tests' kit (`tests.ingest.kit.Device`: PyNaCl
Ed25519 signature, sealed box to the ingest's key, a counter released under the pilot
policy by the client's own release path), all of them before the clock starts, so the
load generator only sends bytes.

Each device sends `PER_DEVICE` envelopes in sequence (its daily epsilon under the
pilot policy covers six), one request after the other from one worker, as a client
would. A request of batch `b` carries one envelope of each of `b` distinct devices:
the device ledger reads and writes a row per device, so this is its costlier case.
`WORKERS` workers send concurrently, each over a keep-alive connection of its own
(`_Connection`, HTTP/1.1 spoken by hand).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from nacl.public import PublicKey

from benchmarks._ingest_server import REGION
from tests.ingest.kit import Device

__all__ = ["PER_DEVICE", "WORKERS", "LoadResult", "Workload", "get_many", "make_workload", "send"]

PER_DEVICE = 6
WORKERS = 16


@dataclass(frozen=True, slots=True)
class Workload:
    """Request bodies per worker, and every sealed item they carry (for the floor)."""

    batch: int
    bodies: list[list[bytes]]
    items: list[str]

    @property
    def envelopes(self) -> int:
        """How many envelopes the workload sends."""
        return len(self.items)


@dataclass(frozen=True, slots=True)
class LoadResult:
    """What the client saw: wall time and per-request latencies (seconds)."""

    envelopes: int
    wall: float
    latencies: list[float]
    failures: list[str]

    @property
    def rate(self) -> float:
        """Envelopes per second."""
        return self.envelopes / self.wall

    def percentile(self, q: int) -> float:
        """The q-th percentile of request latency, in seconds."""
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[q - 1]


def make_workload(key: PublicKey, *, batch: int, groups_per_worker: int) -> Workload:
    """`WORKERS` x `groups_per_worker` groups of `batch` fresh devices, each group
    sending `PER_DEVICE` requests (request r: envelope r of every device in it)."""
    bodies: list[list[bytes]] = [[] for _ in range(WORKERS)]
    items: list[str] = []
    for worker in range(WORKERS):
        for _ in range(groups_per_worker):
            devices = [Device(REGION) for _ in range(batch)]
            for _ in range(PER_DEVICE):
                request = [d.item(key) for d in devices]
                items.extend(request)
                bodies[worker].append(json.dumps({"envelopes": request}).encode())
    return Workload(batch, bodies, items)


class _Connection:
    """One keep-alive HTTP/1.1 connection, spoken by hand.

    The load generator has one core of this machine (the server the other), and httpx
    spends about a millisecond of CPU per request: with it the clients, not the
    server, would set the pace, and a server that is not kept busy groups few requests
    per commit. Like wrk or h2load, this client only writes prepared requests and
    reads `Content-Length` bodies, so the server is what the figures measure.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def open(cls, url: str) -> _Connection:
        parts = urlsplit(url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        return cls(reader, writer)

    async def request(self, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
        """Send one request (`head` ends with the blank line); (status, body)."""
        self._writer.write(head + body)
        status_and_headers = await self._reader.readuntil(b"\r\n\r\n")
        lines = status_and_headers.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return status, await self._reader.readexactly(length)

    async def close(self) -> None:
        self._writer.close()
        await self._writer.wait_closed()


def _head(method: str, path: str, url: str, length: int | None = None) -> bytes:
    host = urlsplit(url).netloc
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    if length is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {length}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


async def _worker(
    url: str,
    bodies: list[bytes],
    batch: int,
    latencies: list[float],
    failures: list[str],
) -> None:
    conn = await _Connection.open(url)
    try:
        for body in bodies:
            started = time.perf_counter()
            status, answer = await conn.request(
                _head("POST", "/v1/envelopes", url, len(body)), body
            )
            latencies.append(time.perf_counter() - started)
            if status != 202 or json.loads(answer).get("accepted") != batch:
                failures.append(f"{status}: {answer[:300]!r}")
    finally:
        await conn.close()


async def _send(url: str, workload: Workload) -> LoadResult:
    latencies: list[float] = []
    failures: list[str] = []
    started = time.perf_counter()
    await asyncio.gather(
        *(_worker(url, b, workload.batch, latencies, failures) for b in workload.bodies)
    )
    wall = time.perf_counter() - started
    return LoadResult(workload.envelopes, wall, latencies, failures)


async def _get_many(url: str, path: str, requests: int) -> None:
    head = _head("GET", path, url)

    async def worker() -> None:
        conn = await _Connection.open(url)
        try:
            for _ in range(requests // WORKERS):
                status, answer = await conn.request(head)
                if status != 200:
                    raise RuntimeError(f"GET {path}: {status} {answer[:200]!r}")
        finally:
            await conn.close()

    await asyncio.gather(*(worker() for _ in range(WORKERS)))


def get_many(url: str, path: str, requests: int) -> None:
    """GET `path` `requests` times from `WORKERS` concurrent clients (the cost of HTTP
    alone, next to the envelopes' figures)."""
    asyncio.run(_get_many(url, path, requests))


def send(url: str, workload: Workload) -> LoadResult:
    """Send every request of `workload` to the ingest at `url`; returns what it took."""
    return asyncio.run(_send(url, workload))
