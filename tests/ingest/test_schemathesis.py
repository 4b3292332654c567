"""The ingest's OpenAPI document, fuzzed by schemathesis through the app in-process.

Every operation, with requests that fit its schema (positive) and requests that do not
(negative: wrong types, missing fields, bad formats): none may be answered 5xx, and
every refusal names its reason in the `{"error": reason, "detail": ...}` body (or is a
batch's per-item `BatchResult`). Generated cases: 60 per mode for each of the seven
POST operations and the one case each of the three GETs has, 843 here; with
`test_fuzz_envelopes.py` (2,500) and `test_fuzz_attestation.py` (7,500), 10,843 in
`make test`. Derandomized,
with no example database.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode

from ingest import IngestSettings, InMemoryEnvelopeBus, create_app, write_private_key
from ingest._attestation_routes import attestation_router
from ingest._audit_routes import audit_router
from ingest._routes import router
from tests.ingest.kit import SERVED_POLICIES
from tests.ingest.sync_client import SyncClient, sync_client

_TMPFS = Path("/dev/shm")
_EXAMPLES = 60


def _document() -> dict[str, Any]:
    """The OpenAPI document of the ingest's routes (what `create_app` serves, built
    without opening any state)."""
    app = FastAPI(title="Quietwire ingest", version="1")
    app.include_router(router)
    app.include_router(attestation_router)
    app.include_router(audit_router)
    return app.openapi()


DOCUMENT = _document()
SCHEMA = schemathesis.openapi.from_dict(DOCUMENT)
OPERATIONS = [(path, method.upper()) for path, item in DOCUMENT["paths"].items() for method in item]
# Negative cases need something to break: a body or a parameter (the GETs have neither,
# and each has one positive case).
CASES = [
    (path, method, mode)
    for path, method in OPERATIONS
    for mode in GenerationMode
    if mode is GenerationMode.POSITIVE or method == "POST"
]
STRATEGIES = {
    (path, method, mode): SCHEMA[path][method].as_strategy(generation_mode=mode)
    for path, method, mode in CASES
}


@pytest.fixture(scope="module")
def http() -> Iterator[SyncClient]:
    """One ingest for every case: an operator token is set (so revocation is reached),
    the unauthenticated rate is high (so enrollment is not all 429s)."""
    root = Path(tempfile.mkdtemp(prefix="qw-st-", dir=_TMPFS if _TMPFS.is_dir() else None))
    write_private_key(root / "ingest.key")
    config = IngestSettings(
        policy_paths=SERVED_POLICIES,
        region="eu-test",
        private_key_path=root / "ingest.key",
        state_dir=root / "state",
        max_batch=8,
        operator_token="fuzz-operator-token",
        unauthenticated_rate=1e6,
        unauthenticated_burst=1_000_000,
        deletion_rate=1e6,
        deletion_burst=1_000_000,
    )
    try:
        with sync_client(create_app(config, bus=InMemoryEnvelopeBus())) as client:
            yield client
    finally:
        shutil.rmtree(root)


def _request(case: Case[Any]) -> dict[str, Any]:
    """httpx keyword arguments for a generated case, as schemathesis serializes it (a
    JSON body, or raw bytes for the negative cases that are not JSON at all)."""
    sent = case.as_transport_kwargs(base_url="http://ingest")
    kwargs: dict[str, Any] = {
        "method": sent["method"],
        "url": sent["url"],
        "headers": sent.get("headers") or {},
        "params": sent.get("params") or None,
    }
    if "json" in sent:
        kwargs["content"] = json.dumps(sent["json"]).encode()
    elif sent.get("data") is not None:
        data = sent["data"]
        kwargs["content"] = data.encode() if isinstance(data, str) else data
    return kwargs


def test_the_fuzzed_document_is_the_one_the_ingest_serves(http: SyncClient) -> None:
    """A route added to the app but not to `_document` fails here, not silently."""
    assert http.request("GET", "/openapi.json").json() == DOCUMENT


def test_every_operation_is_fuzzed() -> None:
    assert sorted(OPERATIONS) == sorted(
        [
            ("/v1/envelopes", "POST"),
            ("/v1/deletion-requests", "POST"),
            ("/v1/ingest-key", "GET"),
            ("/healthz", "GET"),
            ("/v1/enroll", "POST"),
            ("/v1/enroll/activate", "POST"),
            ("/v1/attest/nonce", "POST"),
            ("/v1/attest", "POST"),
            ("/v1/devices/{device_id}/revoke", "POST"),
            ("/v1/audit-key", "GET"),
        ]
    )


@pytest.mark.parametrize(("path", "method", "mode"), CASES, ids=str)
@settings(
    max_examples=_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.data_too_large,
    ],
)
@given(data=st.data())
def test_no_request_is_answered_5xx(
    http: SyncClient, data: st.DataObject, path: str, method: str, mode: GenerationMode
) -> None:
    case = data.draw(STRATEGIES[(path, method, mode)])
    response = http.request(**_request(case))
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        body = response.json()
        if path == "/v1/envelopes" and response.status_code == 422 and "results" in body:
            assert all(r["reason"] for r in body["results"] if r["status"] == "rejected")
        else:
            assert isinstance(body["error"], str), body
            assert body["error"], body
            assert "detail" in body
