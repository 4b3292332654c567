"""Body limits: enforced while the body arrives, item counts taken before parsing, and
memory flat under a burst of oversized requests through a real uvicorn server."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from nacl.public import PrivateKey

from ingest._batch_scan import NotABatch, count_batch_items
from ingest._body import MAX_REQUEST_BYTES, BodyLimits
from tests.harness.net import free_port
from tests.ingest.kit import Device

MiB = 1024 * 1024


# --- the item count, before parsing ----------------------------------------------------


@pytest.mark.parametrize(
    ("body", "count"),
    [
        (b'{"envelopes": []}', 0),
        (b'{"envelopes":["a"]}', 1),
        (b' {\n "envelopes" : [ "a" , "b\\"\\u00e9" ,"c"] } \n', 3),
    ],
)
def test_items_are_counted_without_parsing(body: bytes, count: int) -> None:
    assert count_batch_items(body, limit=8) == count


def test_the_count_stops_once_past_the_limit() -> None:
    # Not even valid after the first items: the scan never gets there.
    body = b'{"envelopes": [' + b'"a",' * 10 + b" garbage"
    assert count_batch_items(body, limit=4) == 5


@pytest.mark.parametrize(
    ("body", "position"),
    [
        (b"[]", 0),
        (b'{"other": []}', 1),
        (b'{"envelopes": [1, 2]}', 15),
        (b'{"envelopes": ["a"], "x": 1}', 19),
        (b'{"envelopes": ["a"]} trailing', 21),
        (b'{"envelopes": ["a\x01"]}', 15),
        (b'{"envelopes": ["a" "b"]}', 19),
    ],
)
def test_anything_else_is_not_a_batch_and_says_where(body: bytes, position: int) -> None:
    with pytest.raises(NotABatch) as caught:
        count_batch_items(body, limit=8)
    assert caught.value.position == position


# --- through the app (in-process) ------------------------------------------------------


async def _chunks(total: int, chunk: int = 64 * 1024) -> AsyncIterator[bytes]:
    block = b"x" * chunk
    sent = 0
    while sent < total:
        size = min(chunk, total - sent)
        yield block[:size]
        sent += size


@pytest.mark.parametrize("path", ["/v1/enroll", "/v1/attest", "/v1/devices/d/revoke", "/nope"])
async def test_a_declared_length_over_the_limit_is_refused_unread(
    client: httpx.AsyncClient, path: str
) -> None:
    response = await client.post(path, content=b"{" + b" " * MAX_REQUEST_BYTES + b"}")
    assert response.status_code == 413
    assert response.json()["error"] == "batch_too_large"
    assert f"the limit of POST {path} is {MAX_REQUEST_BYTES}" in response.json()["detail"]


@pytest.mark.parametrize(
    ("path", "limit"),
    [("/v1/enroll", MAX_REQUEST_BYTES), ("/v1/deletion-requests", 16 * 1024)],
)
async def test_a_chunked_body_is_refused_once_past_the_limit(
    client: httpx.AsyncClient, path: str, limit: int
) -> None:
    response = await client.post(path, content=_chunks(limit + 1))
    assert response.status_code == 413
    assert response.json() == {
        "error": "batch_too_large",
        "detail": f"body exceeds the limit of POST {path}, {limit} bytes",
    }


async def test_a_body_at_the_limit_reaches_the_route(client: httpx.AsyncClient) -> None:
    body = b"{" + b" " * (MAX_REQUEST_BYTES - 2) + b"}"
    response = await client.post("/v1/enroll", content=body)
    assert response.status_code == 422
    assert response.json()["error"] == "malformed_body"


async def test_too_many_tiny_items_are_refused_before_parsing(
    client: httpx.AsyncClient,
) -> None:
    # 200 KiB of one-character items (the fixture's limits: 256 KiB, 8 items).
    body = b'{"envelopes": [' + b'"a",' * 50_000 + b'"a"]}'
    response = await client.post("/v1/envelopes", content=body)
    assert response.status_code == 413
    assert response.json() == {
        "error": "batch_too_large",
        "detail": "batch has more than 8 items, the limit",
    }


async def test_a_large_body_of_another_shape_is_not_parsed(client: httpx.AsyncClient) -> None:
    body = b'{"envelopes": [' + b"1," * 100_000 + b"1]}"
    response = await client.post("/v1/envelopes", content=body)
    assert response.status_code == 422
    assert response.json() == {
        "error": "malformed_body",
        "detail": "body is not an envelope batch: at byte 15: expected item 0 as a JSON string",
    }


async def test_a_small_body_of_another_shape_gets_the_parsers_reason(
    client: httpx.AsyncClient,
) -> None:
    not_json = await client.post("/v1/envelopes", content=b'{"envelopes": [')
    assert (not_json.status_code, not_json.json()["error"]) == (400, "malformed_body")
    escaped_key = await client.post("/v1/envelopes", content=b'{"envelop\\u0065s": [1]}')
    assert escaped_key.status_code == 422
    assert "envelopes.0" in escaped_key.json()["detail"]


async def test_a_batch_within_the_limits_is_still_accepted(
    client: httpx.AsyncClient, device: Device, ingest_key: PrivateKey
) -> None:
    items = [device.item(ingest_key.public_key) for _ in range(3)]
    response = await client.post("/v1/envelopes", json={"envelopes": items})
    assert response.status_code == 202
    assert response.json()["accepted"] == 3


async def test_a_client_gone_mid_body_reaches_no_route() -> None:
    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": b'{"envelopes": [', "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict[str, Any]] = []
    called: list[bool] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        called.append(True)

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/envelopes", "headers": []}
    await BodyLimits(app, limits={}, default=1024)(scope, receive, send)
    assert (called, sent) == ([], [])


# --- memory under a burst, through a real server ---------------------------------------

_SERVER = """
import sys, uvicorn
from ingest import IngestSettings, create_app
settings = IngestSettings(state_dir=sys.argv[1], max_body_bytes=1024 * 1024)
uvicorn.run(create_app(settings), host="127.0.0.1", port=int(sys.argv[2]), log_level="error")
"""


def _kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{pid}/status")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[int, str]]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVER, str(tmp_path / "state"), str(port)],
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(base + "/v1/ingest-key").status_code == 200:
                    break
            except httpx.TransportError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield proc.pid, base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _sized(total: int) -> Iterator[bytes]:
    block = b"x" * (64 * 1024)
    for _ in range(total // len(block)):
        yield block


async def _oversized(client: httpx.AsyncClient, path: str, *, declared: bool) -> int:
    size = 200 * 1000 * 1000 // (64 * 1024) * (64 * 1024)
    headers = {"content-length": str(size)} if declared else {}
    response = await client.post(path, content=_async(_sized(size)), headers=headers)
    return response.status_code


async def _async(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk
        await asyncio.sleep(0)


async def test_memory_stays_flat_under_a_burst_of_200_mb_bodies(
    server: tuple[int, str],
) -> None:
    """Six concurrent 200 MB bodies (to enrollment and to envelopes, with and without a
    Content-Length): every one refused 413, and the server's peak RSS grows by less than
    32 MiB (reading any one of them whole would add 200 MB)."""
    pid, base = server
    async with httpx.AsyncClient(base_url=base, timeout=120) as client:
        # Warm up the paths measured (imports, first-request allocations).
        for path in ("/v1/enroll", "/v1/envelopes"):
            await client.post(path, content=b"{" + b" " * 2 * MiB + b"}")
        before = _kib(pid, "VmHWM")
        statuses = await asyncio.gather(
            *(
                _oversized(client, path, declared=declared)
                for path in ("/v1/enroll", "/v1/envelopes")
                for declared in (True, False, False)
            )
        )
        assert (await client.get("/v1/ingest-key")).status_code == 200
    grown_mib = (_kib(pid, "VmHWM") - before) / 1024
    assert statuses == [413] * 6
    assert grown_mib < 32, f"peak RSS grew by {grown_mib:.0f} MiB"
