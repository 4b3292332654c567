"""No envelope a device can send makes the ingest fail: property-based tests.

Generated cases: 2,000 items through `EnvelopeVerifier` (every check from base64 to the
Prio3 reports' shapes), 300 batches of one to three items through the whole app over
HTTP (body limits, verifier, device ledger, bus, audit log) and 200 signed deletion
requests over HTTP: 2,500 here; with `test_fuzz_attestation.py` (7,500) and
`test_schemathesis.py` (843), 10,843 in `make test`. Each one is answered with a
verdict naming its reason, never an exception or a 5xx. Derandomized, with no example
database: every run tries the same cases.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from nacl.public import PrivateKey

from ingest import IngestSettings, InMemoryEnvelopeBus, create_app, write_private_key
from ingest._report_rules import ReportRules
from ingest._verify import Accepted, EnvelopeVerifier, Rejected
from policies import load_attestation_policy, load_policy
from schemas import RejectReason
from tests.ingest.envelope_strategies import (
    RECEIVED_AT,
    base_envelope,
    deletion_requests,
    devices,
    items,
)
from tests.ingest.kit import SERVED_POLICIES, Device, seal
from tests.ingest.sync_client import SyncClient, sync_client

REGION = "eu-test"
_TMPFS = Path("/dev/shm")
_KEY = PrivateKey.generate()
_SERVED = [load_policy(p) for p in SERVED_POLICIES]
_VERIFIER = EnvelopeVerifier(
    _KEY,
    region=REGION,
    known_policy_hashes={p.content_hash for p in _SERVED},
    report_rules=ReportRules(_SERVED),
    software_tiers=[t.value for t in load_attestation_policy().software_tiers],
)


class _Clock:
    """The ingest's clock: the system's, unless a test sets `at`."""

    def __init__(self) -> None:
        self.at: datetime | None = None

    def __call__(self) -> datetime:
        return self.at if self.at is not None else datetime.now(UTC)


_CLOCK = _Clock()

FUZZ = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def test_the_envelopes_start_from_one_the_ingest_accepts() -> None:
    """Mutations start from the deep end: the unmutated envelope passes every check."""
    device = Device(REGION)
    signed = device.signed(json.dumps(base_envelope(device)).encode())
    verdict = _VERIFIER.verify(seal(_KEY.public_key, signed), received_at=RECEIVED_AT)
    assert isinstance(verdict, Accepted)


@settings(FUZZ, max_examples=2_000)
@given(data=st.data(), device=devices(REGION))
def test_the_verifier_answers_every_item_with_a_reason(data: st.DataObject, device: Device) -> None:
    item = data.draw(items(device, _KEY.public_key))
    verdict = _VERIFIER.verify(item, received_at=RECEIVED_AT)
    assert isinstance(verdict, Accepted | Rejected)
    # How deep the cases reach: `pytest --hypothesis-show-statistics` lists the verdicts.
    event("accepted" if isinstance(verdict, Accepted) else verdict.reason.value)
    if isinstance(verdict, Rejected):
        assert isinstance(verdict.reason, RejectReason)
        assert verdict.detail


@pytest.fixture(scope="module")
def http() -> Iterator[SyncClient]:
    """One ingest (in-memory bus, real ledger and audit log) for every example."""
    # State on tmpfs: what is tested is the answers, not durability (fsyncs are slow).
    root = Path(tempfile.mkdtemp(prefix="qw-fuzz-", dir=_TMPFS if _TMPFS.is_dir() else None))
    write_private_key(root / "ingest.key")
    config = IngestSettings(
        policy_paths=SERVED_POLICIES,
        region=REGION,
        private_key_path=root / "ingest.key",
        state_dir=root / "state",
        max_batch=8,
        # Hundreds of requests from one address: the deletion rate limit is not under test.
        deletion_rate=1e6,
        deletion_burst=1_000_000,
    )
    try:
        with sync_client(create_app(config, bus=InMemoryEnvelopeBus(), clock=_CLOCK)) as client:
            yield client
    finally:
        shutil.rmtree(root)


@settings(FUZZ, max_examples=300)
@given(data=st.data(), device=devices(REGION), size=st.integers(1, 3))
def test_the_app_answers_every_batch_without_a_5xx(
    http: SyncClient, data: st.DataObject, device: Device, size: int
) -> None:
    batch = [data.draw(items(device, http.ingest_key)) for _ in range(size)]
    response = http.request("POST", "/v1/envelopes", json={"envelopes": batch})
    assert response.status_code in (202, 422), response.text
    body = response.json()
    if "error" in body:  # the batch itself refused (an empty item)
        assert body["error"] == "malformed_body"
        return
    assert body["accepted"] + body["rejected"] == size
    for result in body["results"]:
        # A refusal names its reason; an acceptance names none (or `duplicate`).
        assert (result["status"] == "accepted") == (result.get("reason") in (None, "duplicate"))


@settings(FUZZ, max_examples=200)
@given(data=st.data(), device=devices(REGION))
def test_the_app_answers_every_deletion_request_without_a_5xx(
    http: SyncClient, data: st.DataObject, device: Device
) -> None:
    payload = json.dumps(data.draw(deletion_requests(device))).encode()
    response = http.request("POST", "/v1/deletion-requests", content=device.signed(payload))
    assert response.status_code in (202, 422), response.text
    event(response.json().get("error", "recorded"))
    if response.status_code == 422:
        assert RejectReason(response.json()["error"])
        assert response.json()["detail"]


@pytest.mark.parametrize(
    ("fields", "reason", "received_at"),
    [
        # Earlier findings (500s): times at the edges of the calendar, where moving by
        # the skew or aligning to the policy window leaves the representable range.
        # Received in year 1 (the ingest's clock at its first instant in UTC), the
        # window is not past its retention (window_expired): its alignment is checked.
        (
            {
                "window_start": "0001-01-01T00:00:00+14:00",
                "window_end": "0001-01-01T00:05:00+14:00",
                "sent_at": "0001-01-01T00:06:00+14:00",
            },
            "window_misaligned",
            datetime(1, 1, 1, tzinfo=UTC),
        ),
        (
            {
                "window_start": "9999-12-31T22:00:00-12:00",
                "window_end": "9999-12-31T23:00:00-12:00",
                "sent_at": "9999-12-31T23:59:59-12:00",
            },
            "clock_skew",
            None,
        ),
        ({"sent_at": "0001-01-01T00:00:00+14:00"}, "clock_skew", None),
        # A sequence the warehouse cannot store (BIGINT) was acknowledged, then refused.
        ({"sequence": 2**63}, "schema_invalid", None),
    ],
)
def test_calendar_and_integer_edges_are_refused_with_their_reason(
    http: SyncClient, fields: dict[str, object], reason: str, received_at: datetime | None
) -> None:
    """`received_at`: the ingest's clock (None: the system's)."""
    device = Device(REGION)
    envelope = {**base_envelope(device), **fields}
    item = seal(http.ingest_key, device.signed(json.dumps(envelope).encode()))
    _CLOCK.at = received_at
    try:
        response = http.request("POST", "/v1/envelopes", json={"envelopes": [item]})
    finally:
        _CLOCK.at = None
    assert response.status_code == 422
    assert response.json()["results"][0]["reason"] == reason
