"""A report that is out of bounds, tampered with, or moved is refused by the aggregators'
checks and leaves no trace in the revealed sum."""

from __future__ import annotations

from datetime import timedelta

from nacl.public import PrivateKey

from ingest.aggregation import AggregationService
from schemas import PrioReport
from tests.ingest.aggregation.kit import BATCH, Fleet, encode_l1, forged_report

CELLS = "inference.requests/cells"
HONEST = [[1, 2, 0], [0, 4, 1], [5, 0, 0], [2, 2, 2]]
AFTER = BATCH + timedelta(hours=3)


def _honest(fleet: Fleet) -> None:
    for m in HONEST:
        fleet.send({CELLS: m})


def _revealed(fleet: Fleet) -> tuple[list[float], set[int]]:
    rows = fleet.sink.connection.execute(
        "SELECT value, reports FROM fleet_aggregates WHERE task = ? ORDER BY vector_index",
        [CELLS],
    ).fetchall()
    return [r[0] for r in rows], {int(r[1]) for r in rows}


def _truth() -> list[int]:
    return [sum(m[i] for m in HONEST) for i in range(3)]


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


def _store(fleet: Fleet, report: PrioReport) -> None:
    fleet.store([fleet.envelope([report])])


def test_a_forged_but_valid_encoding_is_aggregated(
    fleet: Fleet, helper_key: PrivateKey, leader: AggregationService
) -> None:
    """The forging path itself is sound: a valid encoding made by it verifies."""
    task = fleet.tasks[CELLS]
    _honest(fleet)
    _store(fleet, forged_report(fleet.policy, helper_key, task, encode_l1([1, 1, 1], task.bits)))
    leader.run_once(AFTER)
    values, reports = _revealed(fleet)
    assert values == [t + 1 for t in _truth()]
    assert reports == {5}


def test_out_of_bounds_reports_fail_the_proof_and_leave_no_trace(
    fleet: Fleet, helper_key: PrivateKey, leader: AggregationService
) -> None:
    task = fleet.tasks[CELLS]  # 3 cells, 4 bits: the entries sum to at most 15
    _honest(fleet)
    # Every entry in range, their sum (30) over the bound, the claimed norm a lie.
    over_sum = encode_l1([15, 15, 0], task.bits, norm=15)
    # An "entry" of 1000 as a non-bit field element: what a poisoning device would try.
    not_bits = [1000] + [0] * (len(over_sum) - 1)
    for encoded in (over_sum, not_bits):
        _store(fleet, forged_report(fleet.policy, helper_key, task, encoded))
    stats = leader.run_once(AFTER)
    assert stats.reports_rejected == {"report_verify_failed": 2}
    values, reports = _revealed(fleet)
    assert values == _truth()
    assert reports == {len(HONEST)}
    assert fleet.statuses() == {"aggregated": len(HONEST), "report_verify_failed": 2}


def test_tampered_shares_are_refused(fleet: Fleet, leader: AggregationService) -> None:
    _honest(fleet)
    reports = [fleet.reports({CELLS: [1, 1, 1]})[0] for _ in range(3)]
    tampered = [
        reports[0].model_copy(update={"leader_share": _flip(reports[0].leader_share, 3)}),
        reports[1].model_copy(update={"public_share": _flip(reports[1].public_share, 5)}),
        reports[2].model_copy(update={"helper_share": _flip(reports[2].helper_share, 40)}),
    ]
    for r in tampered:
        _store(fleet, r)
    stats = leader.run_once(AFTER)
    assert stats.reports_rejected == {"report_verify_failed": 2, "report_decode_failed": 1}
    values, reports_count = _revealed(fleet)
    assert values == _truth()
    assert reports_count == {len(HONEST)}


def test_a_helper_share_moved_to_another_report_is_refused(
    fleet: Fleet, leader: AggregationService
) -> None:
    """A leader cannot replay a device's helper share under another report id."""
    _honest(fleet)
    a, b = (fleet.reports({CELLS: [3, 0, 0]})[0] for _ in range(2))
    moved = b.model_copy(update={"helper_share": a.helper_share})
    _store(fleet, moved)
    stats = leader.run_once(AFTER)
    assert stats.reports_rejected == {"share_binding_mismatch": 1}
    values, _ = _revealed(fleet)
    assert values == _truth()


def test_undecodable_leader_shares_never_reach_the_helper(
    fleet: Fleet, leader: AggregationService
) -> None:
    _honest(fleet)
    report = fleet.reports({CELLS: [1, 0, 0]})[0]
    _store(fleet, report.model_copy(update={"leader_share": report.leader_share[:-7]}))
    stats = leader.run_once(AFTER)
    assert stats.reports_rejected == {"report_decode_failed": 1}
    assert stats.jobs == 1  # the honest reports' job only
    values, _ = _revealed(fleet)
    assert values == _truth()
