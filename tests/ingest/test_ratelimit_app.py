"""The enrollment and attestation endpoints through the app: a source past its bucket
gets 429 rate_limited with Retry-After, and the audit log counts the flood in a few
entries."""

from __future__ import annotations

import json
from pathlib import Path

from starlette.requests import Request

from auditlog import AuditLog
from ingest import IngestSettings, InMemoryEnvelopeBus, create_app, write_private_key
from ingest._attestation_routes import _source
from tests.ingest.kit import SERVED_POLICIES, asgi_client

UNKNOWN = {"device_id": "tpm-" + "0" * 32}


def _settings(tmp_path: Path) -> IngestSettings:
    write_private_key(tmp_path / "ingest.key")
    return IngestSettings(
        policy_paths=SERVED_POLICIES,
        private_key_path=tmp_path / "ingest.key",
        state_dir=tmp_path / "state",
        unauthenticated_rate=0.001,  # nothing refills during the test
        unauthenticated_burst=3,
    )


async def test_a_source_past_its_burst_is_429_with_retry_after(tmp_path: Path) -> None:
    app = create_app(_settings(tmp_path), bus=InMemoryEnvelopeBus())
    async with asgi_client(app) as client:
        within = [
            (await client.post("/v1/attest/nonce", json=UNKNOWN)).status_code for _ in range(3)
        ]
        limited = await client.post("/v1/enroll/activate", json={"device_id": "x"})
        revoke = await client.post("/v1/devices/x/revoke", json={"reason": "r"})

    assert within == [404, 404, 404]  # device_unknown: each took a token
    assert limited.status_code == 429
    assert limited.json()["error"] == "rate_limited"
    assert "too many requests from 127.0.0.1" in limited.json()["detail"]
    assert int(limited.headers["Retry-After"]) >= 1
    assert revoke.status_code == 429  # the operator endpoint's refusals count too


async def test_bodies_that_are_not_json_take_tokens_too(tmp_path: Path) -> None:
    """FastAPI refuses a body that is not JSON before the limiter's dependency runs; the
    endpoint still counts it, and past the burst answers 429, not 422."""
    app = create_app(_settings(tmp_path), bus=InMemoryEnvelopeBus())
    junk = {"content": b"not json", "headers": {"content-type": "application/json"}}
    async with asgi_client(app) as client:
        first = [(await client.post("/v1/attest", **junk)).status_code for _ in range(3)]
        after = [
            (await client.post(path, **junk)).status_code
            for path in ("/v1/attest", "/v1/enroll", "/v1/devices/x/revoke")
        ]
        shaped = await client.post("/v1/attest/nonce", json=UNKNOWN)
        elsewhere = await client.post("/v1/deletion-requests", **junk)

    assert first == [422, 422, 422]  # malformed_body, each taking a token
    assert after == [429, 429, 429]
    assert shaped.status_code == 429  # valid JSON: one token, as before
    assert elsewhere.status_code != 429  # not an endpoint under this limit


async def test_a_flood_is_counted_in_a_bounded_number_of_audit_entries(tmp_path: Path) -> None:
    app = create_app(_settings(tmp_path), bus=InMemoryEnvelopeBus())
    async with asgi_client(app) as client:
        statuses = [
            (await client.post("/v1/attest/nonce", json=UNKNOWN)).status_code for _ in range(60)
        ]
    log = AuditLog(tmp_path / "state" / "audit.sqlite3", read_only=True)
    entries = log.entries(action="nonce")
    log.close()

    assert statuses.count(429) == 57
    by_reason: dict[str | None, int] = {}
    for e in entries:
        summary = e.detail is not None and e.detail.startswith("{")
        count = json.loads(e.detail or "")["repeated"] if summary else 1
        by_reason[e.reason] = by_reason.get(e.reason, 0) + count
    # one written and one summary per kind; together they count every request
    assert len(entries) == 4
    assert by_reason == {"device_unknown": 3, "rate_limited": 57}


def test_an_ipv6_source_is_its_slash_64() -> None:
    def source(host: str) -> str:
        return _source(Request({"type": "http", "client": (host, 1234), "headers": []}))

    assert source("2001:db8:1:2:aaaa::1") == source("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert source("2001:db8:1:3::1") != source("2001:db8:1:2::1")
    assert source("198.51.100.7") == "198.51.100.7"


def test_every_route_under_the_limit_is_known_to_the_refused_body_path() -> None:
    """`admit_refused_body` names the limited paths by pattern: it must cover every route
    that takes a token (`SourceDep`), and nothing else of the router."""
    from fastapi.routing import APIRoute

    from ingest._attestation_routes import _LIMITED, _admitted, attestation_router

    for route in attestation_router.routes:
        assert isinstance(route, APIRoute)
        takes_token = any(d.call is _admitted for d in route.dependant.dependencies)
        path = route.path.replace("{device_id}", "tpm-" + "0" * 32)
        assert bool(_LIMITED.fullmatch(path)) == takes_token, route.path
