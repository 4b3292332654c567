"""The enrollment and attestation endpoints through the app: a source past its bucket
gets 429 rate_limited with Retry-After, and the audit log counts the flood in a few
entries."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from nacl.signing import SigningKey
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from auditlog import AuditLog
from ingest import IngestSettings, InMemoryEnvelopeBus, create_app, write_private_key
from ingest._attestation_routes import client_source
from tests.ingest.kit import SERVED_POLICIES, asgi_client
from tests.ingest.test_consent_and_deletion import _deletion as deletion_body

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


UNDECODABLE = {
    # Not what FastAPI reports as a JSON decode error: before, a bare 400 bad_request
    # "There was an error parsing the body", no token taken and nothing audited.
    b'{"device_id": "\xff"}': "body is not UTF-8 JSON",
    b'{"device_id": ' + b"9" * 5000 + b"}": "body has a number too long to parse",
    b"[" * 5000 + b"]" * 5000: "body nests too deep to parse",
}


async def test_bodies_json_cannot_decode_are_malformed_and_take_tokens_too(
    tmp_path: Path,
) -> None:
    """Invalid UTF-8, an integer past Python's digit limit and deep nesting are malformed
    bodies like any other: 422 malformed_body naming the problem (not the body), a token
    taken, 429 past the burst, and the refusal audited (sampled)."""
    app = create_app(_settings(tmp_path), bus=InMemoryEnvelopeBus())
    json_type = {"content-type": "application/json"}
    paths = ("/v1/enroll", "/v1/attest", "/v1/devices/x/revoke")
    async with asgi_client(app) as client:
        first = [
            await client.post(path, content=body, headers=json_type)
            for path, body in zip(paths, UNDECODABLE, strict=True)
        ]
        after = [
            await client.post("/v1/enroll/activate", content=body, headers=json_type)
            for body in UNDECODABLE
        ]
        # Not endpoints under this limit: their own answers, unchanged, and no 429.
        envelopes = await client.post("/v1/envelopes", content=b"[" * 5000, headers=json_type)
        deletion = await client.post(
            "/v1/deletion-requests", content=b'{"v": "\xff"}', headers=json_type
        )
    log = AuditLog(tmp_path / "state" / "audit.sqlite3", read_only=True)
    entries = log.entries(action="activate")
    log.close()

    for resp, problem in zip(first, UNDECODABLE.values(), strict=True):
        assert resp.status_code == 422, resp.text
        assert resp.json()["error"] == "malformed_body"
        (error,) = resp.json()["detail"]  # the shape of any malformed body's detail
        assert error["loc"] == ["body"]
        assert error["msg"].startswith(problem)
        assert "999" not in resp.text  # never the body
        assert "[[" not in resp.text
    assert [r.status_code for r in after] == [429, 429, 429]
    assert {r.json()["error"] for r in after} == {"rate_limited"}
    assert [(e.decision, e.reason) for e in entries][:1] == [("rejected", "rate_limited")]
    assert (envelopes.status_code, envelopes.json()["error"]) == (400, "malformed_body")
    assert (deletion.status_code, deletion.json()["error"]) == (422, "malformed_signed_envelope")


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
        return client_source(Request({"type": "http", "client": (host, 1234), "headers": []}))

    assert source("2001:db8:1:2:aaaa::1") == source("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert source("2001:db8:1:3::1") != source("2001:db8:1:2::1")
    assert source("198.51.100.7") == "198.51.100.7"


def test_an_ipv4_host_written_as_ipv6_is_keyed_by_its_ipv4_address() -> None:
    """A dual-stack socket or proxy reports an IPv4 client as ``::ffff:a.b.c.d``, and a
    NAT64 gateway as ``64:ff9b::a.b.c.d``: by their /64 (``::/64``, ``64:ff9b::/64``)
    every IPv4 client would share one bucket."""

    def source(host: str) -> str:
        return client_source(Request({"type": "http", "client": (host, 1234), "headers": []}))

    assert source("::ffff:203.0.113.5") == "203.0.113.5" == source("203.0.113.5")
    assert source("::ffff:198.51.100.7") == "198.51.100.7"
    assert source("64:ff9b::203.0.113.5") == "203.0.113.5"
    assert source("64:ff9b::c633:6407") == "198.51.100.7"
    # Only the /96 well-known prefix embeds an address; the rest of 64:ff9b::/64 does not.
    assert source("64:ff9b::1:0:0:1") == "64:ff9b::/64"
    # The deprecated IPv4-compatible form too; the unspecified and loopback addresses
    # are not IPv4 hosts.
    assert source("::203.0.113.5") == "203.0.113.5"
    assert source("::1") == "::/64"


async def test_ipv4_clients_seen_through_a_dual_stack_socket_have_their_own_buckets(
    tmp_path: Path,
) -> None:
    app = create_app(_settings(tmp_path), bus=InMemoryEnvelopeBus())

    async def seen_from(scope: Scope, receive: Receive, send: Send) -> None:
        """The app, with the client address a request names in `x-test-client`."""
        host = dict(scope.get("headers", [])).get(b"x-test-client")
        if host is not None:
            scope = scope | {"client": (host.decode(), 40000)}
        await app(scope, receive, send)

    async with asgi_client(seen_from) as client:

        async def nonce(host: str) -> int:
            resp = await client.post(
                "/v1/attest/nonce", json=UNKNOWN, headers={"x-test-client": host}
            )
            return resp.status_code

        first = [await nonce("::ffff:203.0.113.5") for _ in range(4)]
        other = await nonce("::ffff:198.51.100.7")
        nat64 = await nonce("64:ff9b::203.0.113.5")

    assert first == [404, 404, 404, 429]  # device_unknown three times, then the burst is spent
    assert other == 404  # another IPv4 host: its own bucket (was 429: one bucket, ::/64)
    assert nat64 == 429  # the same IPv4 host through NAT64: the same bucket


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


async def test_deletion_requests_are_limited_per_source_and_the_refusals_sampled(
    tmp_path: Path,
) -> None:
    # Any fresh software key may ask to delete "its" data, and each request costs the
    # warehouse a scan: one source's flood is refused before its body is read.
    limits = {"deletion_rate": 0.001, "deletion_burst": 2, "region": "eu-test"}
    settings = _settings(tmp_path).model_copy(update=limits)
    app = create_app(settings, bus=InMemoryEnvelopeBus())
    async with asgi_client(app) as client:
        statuses = [
            (
                await client.post(
                    "/v1/deletion-requests", json=deletion_body(SigningKey.generate())
                )
            ).status_code
            for _ in range(5)
        ]
        limited = await client.post("/v1/deletion-requests", content=b"not even json")
        # The other endpoints' buckets are their own.
        nonce = await client.post("/v1/attest/nonce", json=UNKNOWN)

    assert statuses == [202, 202, 429, 429, 429]
    assert limited.status_code == 429
    assert "too many deletion requests from 127.0.0.1" in limited.json()["detail"]
    assert int(limited.headers["Retry-After"]) >= 1
    assert nonce.status_code == 404
    log = AuditLog(settings.state_dir / "audit.sqlite3")
    refused = log.entries(reason="rate_limited")
    log.close()
    # Four refusals: the first of the interval, then one summary of the rest.
    assert [(e.action, e.decision) for e in refused] == [("deletion", "rejected")] * 2


async def test_an_audit_log_that_cannot_commit_is_a_503_on_every_endpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Review s18b: attestation decisions and rate-limit refusals were a bare 500.
    def full(self: AuditLog, *args: object, **kwargs: object) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    settings = _settings(tmp_path).model_copy(update={"region": "eu-test"})
    app = create_app(settings, bus=InMemoryEnvelopeBus())
    async with asgi_client(app) as client:
        monkeypatch.setattr(AuditLog, "append", full)
        monkeypatch.setattr(AuditLog, "append_many", full)
        answers = [
            await client.post("/v1/attest/nonce", json=UNKNOWN),
            await client.post("/v1/deletion-requests", json=deletion_body(SigningKey.generate())),
        ]
        monkeypatch.undo()
    for resp in answers:
        assert resp.status_code == 503, resp.text
        assert resp.json()["error"] in {"state_unavailable", "audit_unavailable"}
        assert "database or disk is full" in resp.json()["detail"]
        assert resp.headers["retry-after"]
