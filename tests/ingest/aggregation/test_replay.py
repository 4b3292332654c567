"""A replayed report counts once: refused by the sink, and by the helper if a leader
(or a second leader with its own warehouse) sends it again."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

import httpx

from auditlog import AuditLog
from ingest import DuckDBSink
from ingest.aggregation import (
    AggregationService,
    BatchKey,
    HelperClient,
    TaskCatalog,
    job_id_for,
)
from ingest.aggregation._vdaf import task_vdaf, task_verify_key
from ingest.aggregation._wire import AggregationJobRequest, ReportInit
from policies import task_context
from tests.ingest.aggregation.conftest import TOKEN
from tests.ingest.aggregation.kit import (
    BATCH,
    REGION,
    VERIFY_KEY,
    Fleet,
    ZeroNoise,
)

CELLS = "inference.requests/cells"
AFTER = BATCH + timedelta(hours=3)


def test_a_replayed_report_is_refused_by_the_sink_and_counted_once(
    fleet: Fleet, leader: AggregationService, audit: AuditLog
) -> None:
    for _ in range(4):
        fleet.send({CELLS: [1, 0, 0]})
    report = fleet.sent[0].envelope.reports[0]
    # The same report in a new envelope of another device (a captured report replayed).
    replay = fleet.envelope([report])
    fleet.store([replay])
    refused = fleet.sink.connection.execute(
        "SELECT reason FROM prio_report_rejections WHERE envelope_id = ?",
        [str(replay.envelope.envelope_id)],
    ).fetchall()
    assert refused == [("report_replayed",)]
    leader.run_once(AFTER)
    values = fleet.sink.connection.execute(
        "SELECT value, reports FROM fleet_aggregates WHERE task = ? ORDER BY vector_index",
        [CELLS],
    ).fetchall()
    assert values[0] == (4.0, 4)
    # The refusal is in the leader's audit log, once, with its reason and device.
    leader.run_once(AFTER)
    (entry,) = [e for e in audit.entries(action="prio_report") if e.decision == "rejected"]
    assert (entry.reason, entry.device_id) == ("report_replayed", replay.envelope.device_id)
    assert audit.verify_chain().ok


def test_the_helper_refuses_a_report_it_has_seen(
    tmp_path: Path,
    fleet: Fleet,
    leader: AggregationService,
    helper_url: str,
    http: httpx.Client,
) -> None:
    """A second leader (its own warehouse, same helper) replays the first one's reports
    in a job of its own: the helper refuses every one it has seen."""
    items = [fleet.send({CELLS: [2, 0, 0]}) for _ in range(4)]
    leader.run_once(BATCH)  # aggregated, not collected: the batch is still open
    other = DuckDBSink(tmp_path / "other.duckdb")
    try:
        fresh = fleet.envelope(fleet.reports({CELLS: [0, 1, 0]}))
        other.write([*items, fresh])
        rogue = AggregationService(
            other,
            HelperClient(helper_url, token=TOKEN, client=http),
            TaskCatalog.from_policies([fleet.policy]),
            VERIFY_KEY,
            noise=ZeroNoise(),
        )
        stats = rogue.run_once(BATCH)
        assert stats.reports_rejected == {"report_replayed": 4}
        assert stats.reports_aggregated == 1
    finally:
        other.close()
    # The helper's batch now holds 5 reports, the first leader's 4: nothing is revealed
    # from a batch the two aggregators do not agree on.
    stats = leader.run_once(AFTER)
    assert stats.collections_refused == {"batch_mismatch": 1}
    assert fleet.sink.connection.execute("SELECT count(*) FROM fleet_aggregates").fetchone() == (0,)


def test_a_report_twice_in_one_job_counts_once(
    fleet: Fleet, helper_url: str, http: httpx.Client
) -> None:
    task = fleet.tasks[CELLS]
    report = fleet.reports({CELLS: [1, 1, 1]})[0]
    vdaf = task_vdaf(task)
    ctx = task_context(fleet.policy.content_hash, task.id)
    key = task_verify_key(VERIFY_KEY, fleet.policy.content_hash, task.id)
    _, share = vdaf.verify_init(
        key, ctx, 0, report.report_id, report.public_share, report.leader_share
    )
    init = ReportInit(
        report_id=report.report_id,
        public_share=report.public_share,
        helper_share=report.helper_share,
        leader_verifier_share=share,
    )
    job = AggregationJobRequest(
        job_id=uuid.uuid4().hex,
        policy_hash=fleet.policy.content_hash,
        task=task.id,
        region=REGION,
        batch_start=BATCH,
        reports=[init, init],
    )
    answer = HelperClient(helper_url, token=TOKEN, client=http).aggregate(job)
    assert [(r.status, r.reason) for r in answer.results] == [
        ("continue", None),
        ("rejected", "report_replayed"),
    ]


def test_job_ids_depend_on_the_report_set_not_its_order(fleet: Fleet) -> None:
    key = BatchKey(fleet.policy.content_hash, CELLS, REGION, BATCH)
    a, b = b"a" * 16, b"b" * 16
    assert job_id_for(key, [a, b]) == job_id_for(key, [b, a])
    assert job_id_for(key, [a]) != job_id_for(key, [a, b])
