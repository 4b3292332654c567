"""A helper that is down, failing, or whose answer is lost delays aggregation: reports
stay pending, nothing is lost, nothing is counted twice."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest

from ingest import DuckDBSink
from ingest.aggregation import (
    AggregationService,
    HelperClient,
    HelperSettings,
    TaskCatalog,
    serve_helper,
)
from policies import Policy
from schemas import DeletionRequestV1, IngestedDeletionRequest, Tier
from tests.ingest.aggregation.conftest import TOKEN
from tests.ingest.aggregation.kit import BATCH, REGION, VERIFY_KEY, Fleet, ZeroNoise

CELLS = "inference.requests/cells"
AFTER = BATCH + timedelta(hours=3)
MEASUREMENTS = [[1, 0, 0], [0, 2, 0], [0, 0, 3], [4, 0, 0], [1, 1, 1]]


def _unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _leader(
    sink: DuckDBSink, url: str, client: httpx.Client, policy: Policy, noise: ZeroNoise
) -> AggregationService:
    return AggregationService(
        sink,
        HelperClient(url, token=TOKEN, client=client),
        TaskCatalog.from_policies([policy]),
        VERIFY_KEY,
        noise=noise,
        max_job_reports=2,  # several jobs per batch
    )


def _revealed(fleet: Fleet) -> list[tuple[float, int]]:
    rows = fleet.sink.connection.execute(
        "SELECT value, reports FROM fleet_aggregates WHERE task = ? ORDER BY vector_index",
        [CELLS],
    ).fetchall()
    return [(float(v), int(n)) for v, n in rows]


def _expected() -> list[tuple[float, int]]:
    n = len(MEASUREMENTS)
    return [(float(sum(m[i] for m in MEASUREMENTS)), n) for i in range(3)]


@pytest.fixture
def sent(fleet: Fleet) -> Fleet:
    for m in MEASUREMENTS:
        fleet.send({CELLS: m})
    return fleet


def test_a_helper_that_is_down_delays_aggregation_without_losing_reports(
    sent: Fleet, helper_settings: HelperSettings, http: httpx.Client
) -> None:
    port = _unused_port()
    noise = ZeroNoise()
    leader = _leader(sent.sink, f"http://127.0.0.1:{port}", http, sent.policy, noise)
    for _ in range(2):
        stats = leader.run_once(AFTER)
        assert stats.helper_unavailable == 1
        assert stats.reports_aggregated == 0
    assert sent.statuses() == {"pending": len(MEASUREMENTS)}
    assert _revealed(sent) == []
    with serve_helper(helper_settings, policies=[sent.policy], noise=ZeroNoise(), port=port):
        stats = leader.run_once(AFTER)
    assert stats.helper_unavailable == 0
    assert stats.batches_collected == 1
    assert sent.statuses() == {"aggregated": len(MEASUREMENTS)}
    assert _revealed(sent) == _expected()


def test_5xx_answers_leave_reports_pending(sent: Fleet) -> None:
    def failing(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, json={"error": "overloaded"})

    with httpx.Client(transport=httpx.MockTransport(failing)) as client:
        stats = _leader(sent.sink, "http://helper", client, sent.policy, ZeroNoise()).run_once(
            AFTER
        )
    assert stats.helper_unavailable == 1
    assert sent.statuses() == {"pending": len(MEASUREMENTS)}


class _LoseAnswers(httpx.BaseTransport):
    """Forwards requests to the real helper, but loses the first `n` job answers."""

    def __init__(self, n: int) -> None:
        self._real = httpx.HTTPTransport()
        self.lost = 0
        self._n = n

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self._real.handle_request(request)
        if request.url.path.endswith("/aggregation-jobs") and self.lost < self._n:
            response.read()
            self.lost += 1
            raise httpx.ReadTimeout("the answer was lost", request=request)
        return response

    def close(self) -> None:
        self._real.close()


@pytest.fixture
def lossy() -> Iterator[tuple[httpx.Client, _LoseAnswers]]:
    transport = _LoseAnswers(2)
    with httpx.Client(transport=transport, timeout=30.0) as client:
        yield client, transport


def test_a_lost_answer_is_retried_as_the_same_job_and_counted_once(
    sent: Fleet, helper_url: str, lossy: tuple[httpx.Client, _LoseAnswers]
) -> None:
    client, transport = lossy
    leader = _leader(sent.sink, helper_url, client, sent.policy, ZeroNoise())
    first = leader.run_once(AFTER)
    assert first.helper_unavailable == 1
    second = leader.run_once(AFTER)  # the second answer is lost too
    assert second.helper_unavailable == 1
    assert transport.lost == 2
    third = leader.run_once(AFTER)
    assert third.batches_collected == 1
    # The helper answered the first job three times, counted it once.
    stats = httpx.get(
        f"{helper_url}/v1/helper-stats", headers={"authorization": f"Bearer {TOKEN}"}
    ).json()
    assert stats["jobs_repeated"] == 2
    assert stats["reports_continued"] == len(MEASUREMENTS)
    assert _revealed(sent) == _expected()


def test_a_helper_down_at_collection_never_makes_the_leader_redraw(
    sent: Fleet, helper_settings: HelperSettings, http: httpx.Client
) -> None:
    port = _unused_port()
    noise = ZeroNoise()
    leader = _leader(sent.sink, f"http://127.0.0.1:{port}", http, sent.policy, noise)
    with serve_helper(helper_settings, policies=[sent.policy], noise=ZeroNoise(), port=port):
        leader.run_once(BATCH)  # aggregated while the batch is open
    for _ in range(2):
        stats = leader.run_once(AFTER)  # closed: the leader draws, the helper is down
        assert stats.helper_unavailable == 1
    assert noise.draws == 1
    status = sent.sink.connection.execute("SELECT status FROM prio_batches WHERE task = ?", [CELLS])
    assert status.fetchall() == [("collecting",)]
    with serve_helper(helper_settings, policies=[sent.policy], noise=ZeroNoise(), port=port):
        stats = leader.run_once(AFTER)
    assert stats.batches_collected == 1
    assert noise.draws == 1
    assert _revealed(sent) == _expected()


def test_a_deletion_request_leaves_reports_already_sent_to_the_helper(
    sent: Fleet, helper_url: str, lossy: tuple[httpx.Client, _LoseAnswers]
) -> None:
    """The helper may have summed a report whose answer was lost: the leader keeps it
    and resends the job whole, or the two aggregators' batches would never agree."""
    client, _ = lossy
    leader = _leader(sent.sink, helper_url, client, sent.policy, ZeroNoise())
    assert leader.run_once(AFTER).helper_unavailable == 1  # job 1 summed, answer lost
    in_flight = sent.sink.connection.execute(
        "SELECT r.device_id FROM prio_reports r JOIN prio_job_reports j USING (task, report_id)"
    ).fetchall()
    assert len(in_flight) == 2
    for (device_id,) in in_flight:
        sent.sink.write([_deletion(device_id)])
    assert leader.run_once(AFTER).helper_unavailable == 1  # the resend's answer is lost too
    stats = leader.run_once(AFTER)
    assert stats.batches_collected == 1
    assert _revealed(sent) == _expected()


def _deletion(device_id: str) -> IngestedDeletionRequest:
    at = BATCH + timedelta(hours=2)
    return IngestedDeletionRequest(
        deletion=DeletionRequestV1(
            request_id=uuid.uuid4(),
            device_id=device_id,
            region=REGION,
            tier=Tier.PERFORMANCE,
            requested_at=at,
            consent_hash="cd" * 32,
            consent_version=2,
        ),
        received_at=at,
        key_fingerprint="ab" * 32,
    )


def test_a_wrong_token_is_like_a_helper_that_is_down(sent: Fleet, helper_url: str) -> None:
    with httpx.Client() as client:
        leader = AggregationService(
            sent.sink,
            HelperClient(helper_url, token="not-the-token", client=client),
            TaskCatalog.from_policies([sent.policy]),
            VERIFY_KEY,
            noise=ZeroNoise(),
        )
        stats = leader.run_once(AFTER)
    assert stats.helper_unavailable == 1
    assert stats.jobs_refused == {}
    assert sent.statuses() == {"pending": len(MEASUREMENTS)}
