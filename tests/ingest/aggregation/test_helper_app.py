"""The helper's HTTP surface: authentication, body checks, refusals with reason codes
(never a 5xx for a client's mistake), idempotent jobs, and its own audit log."""

from __future__ import annotations

import base64
import json
import os
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from nacl.public import PrivateKey

from ingest import AuditLog
from ingest.aggregation import HelperSettings, serve_helper
from tests.ingest.aggregation.conftest import TOKEN
from tests.ingest.aggregation.kit import BATCH, REGION, Fleet, ZeroNoise

CELLS = "inference.requests/cells"
AUTH = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def small_helper(helper_settings: HelperSettings, fleet: Fleet) -> Iterator[httpx.Client]:
    settings = helper_settings.model_copy(update={"max_job_reports": 3, "max_body_bytes": 64_000})
    with (
        serve_helper(settings, policies=[fleet.policy], noise=ZeroNoise()) as url,
        httpx.Client(base_url=url, timeout=30.0) as client,
    ):
        yield client


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _job(fleet: Fleet, reports: int = 1, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "job_id": uuid.uuid4().hex,
        "policy_hash": fleet.policy.content_hash,
        "task": CELLS,
        "region": REGION,
        "batch_start": BATCH.isoformat(),
        "reports": [
            {
                "report_id": _b64(os.urandom(16)),
                "public_share": _b64(os.urandom(64)),
                "helper_share": _b64(os.urandom(120)),
                "leader_verifier_share": _b64(os.urandom(32)),
            }
            for _ in range(reports)
        ],
    }
    body.update(overrides)
    return body


def test_the_helper_key_is_served_without_authentication(
    small_helper: httpx.Client, helper_key: PrivateKey
) -> None:
    info = small_helper.get("/v1/helper-key").json()
    assert base64.b64decode(info["public_key"]) == bytes(helper_key.public_key)
    assert info["alg"] == "x25519-xsalsa20-poly1305-sealedbox"
    assert small_helper.get("/healthz").json()["status"] == "ok"


@pytest.mark.parametrize(
    "headers", [{}, {"authorization": "Bearer wrong"}, {"authorization": TOKEN}]
)
def test_jobs_and_collections_need_the_leader_token(
    small_helper: httpx.Client, fleet: Fleet, headers: dict[str, str]
) -> None:
    for path in ("/v1/aggregation-jobs", "/v1/collections", "/v1/helper-stats"):
        response = small_helper.post(path, json=_job(fleet), headers=headers)
        if path.endswith("stats"):
            response = small_helper.get(path, headers=headers)
        assert response.status_code == 401
        assert response.json()["error"] == "unauthorized"


def _refusal(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]


def test_bad_bodies_are_4xx_with_a_reason(small_helper: httpx.Client, fleet: Fleet) -> None:
    def post(body: dict[str, Any] | None, content: bytes = b"") -> httpx.Response:
        if body is None:
            return small_helper.post("/v1/aggregation-jobs", headers=AUTH, content=content)
        return small_helper.post("/v1/aggregation-jobs", headers=AUTH, json=body)

    assert _refusal(post(None, content=b"{not json")) == (400, "malformed_body")
    assert _refusal(post({"job_id": "x"})) == (422, "malformed_body")
    assert _refusal(post(_job(fleet, reports=0))) == (422, "malformed_body")
    assert _refusal(post(_job(fleet, policy_hash="0" * 64))) == (400, "unknown_task")
    assert _refusal(post(_job(fleet, task="nope/cells"))) == (400, "unknown_task")
    late = (BATCH + timedelta(minutes=5)).isoformat()
    assert _refusal(post(_job(fleet, batch_start=late))) == (400, "batch_misaligned")
    assert _refusal(post(_job(fleet, reports=4))) == (413, "job_too_large")
    assert _refusal(post(None, content=b"x" * 70_000)) == (413, "batch_too_large")
    # A malformed detail names where, never echoes the input.
    detail = post({"job_id": "SECRET-VALUE"}).json()["detail"]
    assert "SECRET-VALUE" not in json.dumps(detail)


def test_garbage_shares_are_rejected_per_report_not_with_a_5xx(
    small_helper: httpx.Client, fleet: Fleet
) -> None:
    response = small_helper.post("/v1/aggregation-jobs", json=_job(fleet, reports=3), headers=AUTH)
    assert response.status_code == 200
    results = response.json()["results"]
    assert [(r["status"], r["reason"]) for r in results] == [
        ("rejected", "report_decode_failed")
    ] * 3


def test_a_job_id_reused_for_other_reports_is_a_conflict(
    small_helper: httpx.Client, fleet: Fleet
) -> None:
    job = _job(fleet, reports=2)
    first = small_helper.post("/v1/aggregation-jobs", json=job, headers=AUTH)
    again = small_helper.post("/v1/aggregation-jobs", json=job, headers=AUTH)
    assert first.status_code == again.status_code == 200
    assert first.json() == again.json()
    other = _job(fleet, reports=2, job_id=job["job_id"])
    conflict = small_helper.post("/v1/aggregation-jobs", json=other, headers=AUTH)
    assert _refusal(conflict) == (409, "job_conflict")
    stats = small_helper.get("/v1/helper-stats", headers=AUTH).json()
    assert stats["jobs"] == 1
    assert stats["jobs_repeated"] == 1
    assert stats["helper_job_refused.job_conflict"] == 1
    assert stats["reports_rejected.report_decode_failed"] == 2


def test_every_decision_is_in_the_helpers_audit_chain(
    small_helper: httpx.Client, fleet: Fleet, helper_settings: HelperSettings
) -> None:
    small_helper.post("/v1/aggregation-jobs", json=_job(fleet, reports=2), headers=AUTH)
    small_helper.post("/v1/aggregation-jobs", json=_job(fleet, task="x.y/cells"), headers=AUTH)
    log = AuditLog(Path(helper_settings.state_dir) / "audit.sqlite3", read_only=True)
    try:
        assert log.verify_chain().ok
        seen = [(e.action, e.decision, e.reason) for e in log.entries()]
    finally:
        log.close()
    assert seen == [
        ("helper_job", "accepted", None),
        ("helper_report", "rejected", "report_decode_failed"),
        ("helper_report", "rejected", "report_decode_failed"),
        ("helper_job", "rejected", "unknown_task"),
    ]


def test_unknown_routes_and_methods_are_4xx(small_helper: httpx.Client) -> None:
    assert _refusal(small_helper.get("/v1/nothing")) == (404, "not_found")
    assert _refusal(small_helper.get("/v1/aggregation-jobs", headers=AUTH)) == (
        405,
        "method_not_allowed",
    )
