"""Leader and helper together, in-process: exact sums without noise, one row per entry."""

from __future__ import annotations

import json
from datetime import timedelta

from ingest.aggregation import AggregationService
from tests.ingest.aggregation.kit import BATCH, Fleet


def test_exact_sums_land_in_fleet_aggregates(fleet: Fleet, leader: AggregationService) -> None:
    counters = [[1, 2, 0], [0, 0, 15], [3, 3, 3], [7, 0, 1], [0, 1, 0]]
    for c in counters:
        fleet.send({"inference.requests/cells": c})
    stats = leader.run_once(BATCH + timedelta(hours=3))
    assert stats.reports_aggregated == 5
    assert stats.batches_collected == 1
    rows = fleet.sink.connection.execute(
        "SELECT vector_index, value, reports, kind, attributes, draws, scale "
        "FROM fleet_aggregates ORDER BY vector_index"
    ).fetchall()
    totals = [sum(c[i] for c in counters) for i in range(3)]
    assert [r[1] for r in rows] == totals
    assert {r[2] for r in rows} == {5}
    assert [json.loads(r[4]) for r in rows] == [
        {"route": "local"},
        {"route": "cloud"},
        {"route": "other"},
    ]
    assert {(r[3], r[5], r[6]) for r in rows} == {("counter", 2, 0.0)}
    assert fleet.statuses() == {"aggregated": 5}
