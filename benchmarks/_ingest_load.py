"""The load the ingest benchmark sends: real sealed, signed envelopes over real HTTP.

Envelopes are made with the ingest tests' kit (`tests.ingest.kit.Device`: PyNaCl
Ed25519 signature, sealed box to the ingest's key, a counter released under the pilot
policy by the client's own release path), all of them before the clock starts, so the
load generator only sends bytes.

Each device sends `PER_DEVICE` envelopes in sequence (its daily epsilon under the
pilot policy covers six), one request after the other from one worker, as a client
would. A request of batch `b` carries one envelope of each of `b` distinct devices:
the device ledger reads and writes a row per device, so this is its costlier case.
`WORKERS` workers send concurrently over one httpx connection pool.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from dataclasses import dataclass

import httpx
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


async def _worker(
    client: httpx.AsyncClient,
    bodies: list[bytes],
    batch: int,
    latencies: list[float],
    failures: list[str],
) -> None:
    headers = {"content-type": "application/json"}
    for body in bodies:
        started = time.perf_counter()
        response = await client.post("/v1/envelopes", content=body, headers=headers)
        latencies.append(time.perf_counter() - started)
        if response.status_code != 202 or response.json().get("accepted") != batch:
            failures.append(f"{response.status_code}: {response.text[:300]}")


async def _send(url: str, workload: Workload) -> LoadResult:
    latencies: list[float] = []
    failures: list[str] = []
    limits = httpx.Limits(max_connections=WORKERS, max_keepalive_connections=WORKERS)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60.0) as client:
        started = time.perf_counter()
        await asyncio.gather(
            *(_worker(client, b, workload.batch, latencies, failures) for b in workload.bodies)
        )
        wall = time.perf_counter() - started
    return LoadResult(workload.envelopes, wall, latencies, failures)


async def _get_many(url: str, path: str, requests: int) -> None:
    limits = httpx.Limits(max_connections=WORKERS, max_keepalive_connections=WORKERS)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60.0) as client:

        async def worker() -> None:
            for _ in range(requests // WORKERS):
                (await client.get(path)).raise_for_status()

        await asyncio.gather(*(worker() for _ in range(WORKERS)))


def get_many(url: str, path: str, requests: int) -> None:
    """GET `path` `requests` times from `WORKERS` concurrent clients (the cost of HTTP
    alone, next to the envelopes' figures)."""
    asyncio.run(_get_many(url, path, requests))


def send(url: str, workload: Workload) -> LoadResult:
    """Send every request of `workload` to the ingest at `url`; returns what it took."""
    return asyncio.run(_send(url, workload))
