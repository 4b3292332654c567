"""Collection: a batch below the minimum is never revealed, a batch is revealed once,
after its grace period, and the helper's noise is drawn once per batch."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from ingest import AuditLog, DuckDBSink
from ingest.aggregation import (
    AggregationRefused,
    AggregationService,
    CollectionRequest,
    HelperClient,
    HelperSettings,
    TaskCatalog,
    batch_checksum,
    serve_helper,
)
from tests.ingest.aggregation.conftest import TOKEN
from tests.ingest.aggregation.kit import BATCH, REGION, VERIFY_KEY, Fleet, ZeroNoise

CELLS = "inference.requests/cells"
CLOSES = BATCH + timedelta(hours=2)  # one-hour window, one-hour default grace
AFTER = BATCH + timedelta(hours=3)


def _rows(fleet: Fleet) -> list[tuple[float, int]]:
    rows = fleet.sink.connection.execute(
        "SELECT value, reports FROM fleet_aggregates WHERE task = ? ORDER BY vector_index",
        [CELLS],
    ).fetchall()
    return [(float(v), int(n)) for v, n in rows]


def _status(fleet: Fleet) -> str | None:
    row = fleet.sink.connection.execute(
        "SELECT status FROM prio_batches WHERE task = ?", [CELLS]
    ).fetchone()
    return None if row is None else str(row[0])


def test_a_batch_below_the_minimum_is_never_revealed(
    fleet: Fleet, leader: AggregationService, audit: AuditLog, helper_url: str
) -> None:
    ids = [fleet.send({CELLS: [1, 0, 0]}).envelope.reports[0].report_id for _ in range(3)]
    for _ in range(2):
        stats = leader.run_once(AFTER)
        assert stats.batches_below_minimum == 1
        assert stats.batches_collected == 0
    assert _rows(fleet) == []
    assert _status(fleet) == "below_minimum"
    decisions = audit.entries(action="batch_collection")
    assert [(e.decision, e.reason) for e in decisions] == [("rejected", "batch_too_small")]
    assert json.loads(decisions[0].detail or "{}")["reports"] == 3
    # The helper refuses on its own count too, even when the leader's proof is right.
    request = CollectionRequest(
        policy_hash=fleet.policy.content_hash,
        task=CELLS,
        region=REGION,
        batch_start=BATCH,
        report_count=3,
        checksum=batch_checksum(ids),
    )
    with (
        HelperClient(helper_url, token=TOKEN) as helper,
        pytest.raises(AggregationRefused) as refused,
    ):
        helper.collect(request)
    assert (refused.value.status_code, refused.value.reason) == (409, "batch_too_small")
    # A late report lifts it over the minimum: then, and only then, it is revealed.
    fleet.send({CELLS: [0, 1, 0]})
    stats = leader.run_once(AFTER)
    assert stats.batches_collected == 1
    assert _rows(fleet) == [(3.0, 4), (1.0, 4), (0.0, 4)]


def test_a_batch_is_collected_after_its_grace_and_only_once(
    fleet: Fleet, leader: AggregationService
) -> None:
    for _ in range(4):
        fleet.send({CELLS: [2, 1, 0]})
    assert leader.run_once(CLOSES - timedelta(seconds=1)).batches_collected == 0
    assert _status(fleet) == "open"
    assert leader.run_once(CLOSES).batches_collected == 1
    first = _rows(fleet)
    assert first == [(8.0, 4), (4.0, 4), (0.0, 4)]
    assert leader.run_once(AFTER).batches_collected == 0
    # A report arriving after the collection is refused, never added to a revealed batch.
    fleet.send({CELLS: [5, 5, 5]})
    stats = leader.run_once(AFTER)
    assert stats.reports_rejected == {"batch_collected": 1}
    assert _rows(fleet) == first
    assert _status(fleet) == "collected"


def test_final_collects_open_batches(fleet: Fleet, leader: AggregationService) -> None:
    for _ in range(4):
        fleet.send({CELLS: [1, 1, 1]})
    assert leader.run_once(BATCH, final=True).batches_collected == 1


def test_the_helper_reveals_a_batch_once_with_the_same_noise(
    fleet: Fleet, helper_settings: HelperSettings
) -> None:
    """With real OpenDP noise: asked again, the helper returns the stored noisy share."""
    ids = [fleet.send({CELLS: [1, 2, 3]}).envelope.reports[0].report_id for _ in range(4)]
    with serve_helper(helper_settings, policies=[fleet.policy]) as url, httpx.Client() as http:
        helper = HelperClient(url, token=TOKEN, client=http)
        leader = AggregationService(
            fleet.sink, helper, TaskCatalog.from_policies([fleet.policy]), VERIFY_KEY
        )
        assert leader.run_once(AFTER).batches_collected == 1
        request = CollectionRequest(
            policy_hash=fleet.policy.content_hash,
            task=CELLS,
            region=REGION,
            batch_start=BATCH,
            report_count=4,
            checksum=batch_checksum(ids),
        )
        answers = [helper.collect(request) for _ in range(3)]
        assert len({a.aggregate_share for a in answers}) == 1
        assert answers[0].noise_scale > 0
        # A wrong count or checksum is refused, not answered.
        for wrong in (
            request.model_copy(update={"report_count": 5}),
            request.model_copy(update={"checksum": batch_checksum(ids[:3])}),
        ):
            with pytest.raises(AggregationRefused) as refused:
                helper.collect(wrong)
            assert refused.value.reason == "batch_mismatch"
        stats = http.get(f"{url}/v1/helper-stats", headers={"authorization": f"Bearer {TOKEN}"})
        counts = stats.json()
    assert counts["collections"] == 1
    assert counts["collections_repeated"] == 3
    assert counts["helper_collection_refused.batch_mismatch"] == 2


def test_the_helper_refuses_jobs_for_a_collected_batch(
    tmp_path: Path, fleet: Fleet, leader: AggregationService, helper_url: str, http: httpx.Client
) -> None:
    """A leader restored from an old backup sends a job for a batch already revealed."""
    items = [fleet.send({CELLS: [1, 0, 0]}) for _ in range(4)]
    leader.run_once(AFTER)
    stale = DuckDBSink(tmp_path / "restored.duckdb")
    try:
        late = fleet.envelope(fleet.reports({CELLS: [1, 0, 0]}))
        stale.write([*items, late])
        restored = AggregationService(
            stale,
            HelperClient(helper_url, token=TOKEN, client=http),
            TaskCatalog.from_policies([fleet.policy]),
            VERIFY_KEY,
            noise=ZeroNoise(),
        )
        stats = restored.run_once(AFTER)
        assert stats.jobs_refused == {"batch_collected": 1}
        assert stats.reports_rejected == {"batch_collected": 5}
        assert stats.batches_collected == 0
    finally:
        stale.close()
    assert _rows(fleet) == [(4.0, 4), (0.0, 4), (0.0, 4)]
