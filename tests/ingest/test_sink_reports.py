"""The sink keeps each device's Prio3 reports once: no replays, one contribution per batch."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from nacl.public import PrivateKey

from client._shares import ReportSharer
from ingest import DuckDBSink
from policies import aggregation_tasks, load_policy
from schemas import (
    DeletionRequestV1,
    EnvelopeV1,
    IngestedDeletionRequest,
    IngestedEnvelope,
    PrioReport,
    Tier,
)
from tests.ingest.kit import Device

POLICY = load_policy()
TASK = aggregation_tasks(POLICY)["inference.errors/cells"]
DAY = datetime(2025, 1, 1, tzinfo=UTC)
SHARER = ReportSharer(POLICY.content_hash, bytes(PrivateKey.generate().public_key))


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[DuckDBSink]:
    s = DuckDBSink(tmp_path / "wh.duckdb", group="g1")
    yield s
    s.close()


def _report(values: list[int] | None = None) -> PrioReport:
    # Two errors in the second cell, one in the first; the rest of the cells empty.
    return SHARER.report(TASK, values or [1, 2] + [0] * (TASK.length - 2), DAY)


def _ingested(device: Device, *reports: PrioReport, day: datetime = DAY) -> IngestedEnvelope:
    env: dict[str, Any] = device.envelope(
        window_start=day.isoformat(),
        window_end=(day + timedelta(days=1)).isoformat(),
        sent_at=(day + timedelta(days=1)).isoformat(),
        aggregates=[],
        reports=[r.model_dump(mode="json") for r in reports],
    )
    return IngestedEnvelope(
        envelope=EnvelopeV1.model_validate_json(json.dumps(env)),
        received_at=day + timedelta(days=1, minutes=1),
        key_fingerprint="ab" * 32,
        assurance="software",
        batch_start=day,
    )


def _statuses(sink: DuckDBSink) -> list[tuple[str, str]]:
    rows = sink.connection.execute(
        "SELECT device_id, status FROM prio_reports ORDER BY device_id"
    ).fetchall()
    return [(d, s) for d, s in rows]


def _refusals(sink: DuckDBSink) -> list[str]:
    rows = sink.connection.execute("SELECT reason FROM prio_report_rejections").fetchall()
    return sorted(r for (r,) in rows)


def test_reports_are_kept_pending_with_their_batch(sink: DuckDBSink) -> None:
    device = Device()
    report = _report()
    sink.write([_ingested(device, report)])
    row = sink.connection.execute(
        "SELECT task, report_id, batch_start, tier, status, leader_share FROM prio_reports"
    ).fetchone()
    assert row is not None
    assert row[:5] == (TASK.id, report.report_id, DAY, "health", "pending")
    assert bytes(row[5]) == report.leader_share


def test_a_replayed_report_counts_once(sink: DuckDBSink) -> None:
    report = _report()
    first, replay = Device(), Device()
    sink.write([_ingested(first, report)])
    # Another envelope (even another device) carrying the same report id.
    result = sink.write([_ingested(replay, report)])
    assert result.reports_refused == 1
    assert len(_statuses(sink)) == 1
    assert _refusals(sink) == ["report_replayed"]


def test_one_device_contributes_once_per_batch(sink: DuckDBSink) -> None:
    device = Device()
    result = sink.write([_ingested(device, _report()), _ingested(device, _report())])
    assert result.reports_refused == 1
    assert len(_statuses(sink)) == 1
    assert _refusals(sink) == ["duplicate_contribution"]
    # The next day is another batch.
    sink.write([_ingested(device, _report(), day=DAY + timedelta(days=1))])
    assert len(_statuses(sink)) == 2


def test_a_deletion_request_removes_pending_reports_and_refuses_late_ones(
    sink: DuckDBSink,
) -> None:
    device = Device()
    sink.write([_ingested(device, _report())])
    request = IngestedDeletionRequest(
        deletion=DeletionRequestV1(
            request_id=uuid.uuid4(),
            device_id=device.device_id,
            region=device.region,
            tier=Tier.HEALTH,
            requested_at=DAY + timedelta(days=1, hours=1),
            consent_hash="cd" * 32,
            consent_version=2,
        ),
        received_at=DAY + timedelta(days=1, hours=1),
        key_fingerprint="ab" * 32,
    )
    sink.write([request])
    assert _statuses(sink) == []
    rows = sink.connection.execute("SELECT rows_deleted FROM deletion_requests").fetchall()
    assert rows == [(1,)]
    # A replay of an earlier envelope (received before the request) is filtered out.
    late = _ingested(device, _report())
    sink.write([late])
    assert _statuses(sink) == []
    assert _refusals(sink) == ["deleted_by_request"]


def test_retention_removes_reports_and_fleet_aggregates_of_a_tier(sink: DuckDBSink) -> None:
    from warehouse import count_past_retention, enforce_retention

    sink.write([_ingested(Device(), _report())])
    conn = sink.connection
    conn.execute(
        "INSERT INTO fleet_aggregates VALUES ('b', 0, ?, 'h', 'eu', ?, ?, 'inference.errors', "
        "'health', '1', 'counter', '{}', NULL, NULL, 3.0, 120, 'discrete_laplace', 60.0, 2, "
        "1.0, 0.2, 0.0, 15.0, ?)",
        [TASK.id, DAY, DAY + timedelta(days=1), DAY + timedelta(days=1)],
    )
    days = {Tier.HEALTH: 30, Tier.PERFORMANCE: 30, Tier.CONTENT: 7}
    # A day after the window: nothing is past 30 days.
    assert count_past_retention(conn, days, DAY + timedelta(days=2))["health"] == 0
    later = DAY + timedelta(days=40)
    assert count_past_retention(conn, days, later)["health"] == 2  # one report, one figure
    assert enforce_retention(conn, days, later)["health"] == 2
    assert conn.execute("SELECT count(*) FROM prio_reports").fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM fleet_aggregates").fetchone() == (0,)
