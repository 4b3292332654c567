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


def test_histogram_parts_become_bucket_count_and_sum_rows(
    fleet: Fleet, leader: AggregationService
) -> None:
    devices = [
        # buckets (cell-major: local then other, 3 buckets each), counts, sums (units)
        ([1, 2, 0, 0, 0, 1], [3, 1], [2, 9]),
        ([0, 0, 1, 4, 0, 0], [1, 4], [5, 1]),
        ([2, 0, 0, 0, 1, 0], [2, 1], [0, 3]),
        ([0, 1, 1, 0, 0, 0], [2, 0], [4, 0]),
    ]
    for buckets, counts, sums in devices:
        fleet.send({"latency/buckets": buckets, "latency/counts": counts, "latency/sums": sums})
    stats = leader.run_once(BATCH, final=True)
    assert stats.batches_collected == 3
    rows = fleet.sink.connection.execute(
        "SELECT task, vector_index, kind, attributes, bucket_index, bucket_upper, value, unit, "
        "reports, resolution, epsilon, lower_bound, upper_bound, window_start, window_end "
        "FROM fleet_aggregates WHERE signal = 'latency' ORDER BY task, vector_index"
    ).fetchall()
    by_task: dict[str, list[tuple[object, ...]]] = {}
    for r in rows:
        by_task.setdefault(str(r[0]), []).append(r)
    sums = by_task["latency/sums"]
    buckets = by_task["latency/buckets"]
    counts = by_task["latency/counts"]
    totals = [[sum(d[p][i] for d in devices) for i in range(len(devices[0][p]))] for p in range(3)]
    assert [r[6] for r in buckets] == totals[0]
    assert [r[6] for r in counts] == totals[1]
    task = fleet.tasks["latency/sums"]
    assert [r[6] for r in sums] == [t * task.resolution for t in totals[2]]
    local, other = {"route": "local"}, {"route": "other"}
    assert [(json.loads(str(r[3])), r[4], r[5]) for r in buckets] == [
        (local, 0, 0.1),
        (local, 1, 1.0),
        (local, 2, None),
        (other, 0, 0.1),
        (other, 1, 1.0),
        (other, 2, None),
    ]
    assert {(r[2], r[7]) for r in buckets} == {("bucket", "1")}
    assert {(r[2], r[7], r[4], r[5]) for r in counts} == {("count", "1", None, None)}
    assert {(r[2], r[7]) for r in sums} == {("sum", "s")}
    assert {r[8] for r in rows} == {4}
    assert {(r[11], r[12]) for r in sums} == {(0.0, task.bound * task.resolution)}
    assert {r[10] for r in sums} == {task.epsilon}
    assert {(r[13], r[14]) for r in rows} == {(BATCH, BATCH + timedelta(hours=1))}
