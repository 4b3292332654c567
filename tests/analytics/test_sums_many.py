"""Questions asked together (`component_sums_many`, `run_planned`) get the answers they
get alone: same rows, same order, same types, whatever else is in the statement.

A report asks its questions in a few statements instead of one each (a statement over
the cube costs 10 to 20 ms however few rows it adds); the requests of one statement
share key columns by SQL type, so a request's answer must not pick up another's rows or
keys. The warehouse holds the same signals under both privacy models.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import duckdb
import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from analytics import fleet_totals
from analytics._means import (
    _CELL_MEAN,
    _CELL_TOTALS,
    cell_summary,
    cell_summary_of,
    plan_cell_summary,
)
from analytics._sources import (
    Scope,
    Selection,
    SumsRequest,
    _slots,
    component_sums,
    component_sums_many,
    label_keys,
    run_planned,
)
from analytics._totals import _EVERY_FIGURE, WINDOW_KEYS, plan_fleet_totals
from tests.analytics._aggregates import AggregateTruth, counter_batch, histogram_batches
from tests.analytics._aggregates import insert_batches as insert_aggregates
from tests.analytics._fleet import build_fleet
from warehouse import apply_schema, write_envelopes


@pytest.fixture(scope="module")
def conn() -> Iterator[duckdb.DuckDBPyConnection]:
    db = duckdb.connect()
    apply_schema(db)
    cells = [{"cell": f"c{i:02d}", "route": ("local", "cloud")[i % 2]} for i in range(12)]
    items, _ = build_fleet(devices=20, windows=2, counter_cells=cells, hist_cells=cells[:6])
    write_envelopes(db, items)
    rng = np.random.default_rng(3)
    insert_aggregates(
        db,
        [
            counter_batch("test.requests", 0, cells, rng, scale=40.0, high=800, reports=30),
            *histogram_batches(
                "test.latency", 0, cells[:6], rng, bounds=(2.0,), events=(300, 600), reports=30
            ),
        ],
        AggregateTruth(),
    )
    yield db
    db.close()


_CELL = (("r.signal", "signal"), ("r.attributes::VARCHAR", "attributes"))
_REQUESTS = [
    # fleet_totals' keys: text, time, int and float columns
    SumsRequest(
        Scope(None, None, None, _EVERY_FIGURE),
        (
            ("r.signal", "signal"),
            ("r.kind", "kind"),
            *WINDOW_KEYS,
            ("r.attributes::VARCHAR", "attributes"),
            ("r.bucket_index", "bucket_index"),
            ("r.bucket_upper", "bucket_upper"),
        ),
    ),
    # a label and a part, paired: a mean's sums
    SumsRequest(
        Scope("test.latency", None, None, _CELL_MEAN),
        (*label_keys(["route"]), ("{part}", "part")),
        paired=True,
    ),
    # the same keys in another order, another signal and selection
    SumsRequest(
        Scope("test.requests", None, None, Selection.same(["counter"])),
        (*label_keys(["cell", "route"]), ("r.window_end", "window_end")),
    ),
    # expressions of no known type get columns of their own
    SumsRequest(
        Scope(None, None, None, _CELL_TOTALS),
        (
            ("date_trunc('day', r.window_start)", "day"),
            ("r.region || '/' || r.model", "where"),
            *_CELL,
            ("{part}", "measure"),
        ),
    ),
    # nothing matches: an empty answer of the right shape
    SumsRequest(Scope("no.such.signal", None, None, _EVERY_FIGURE), _CELL),
    # a time range
    SumsRequest(
        Scope("test.requests", datetime(2000, 1, 1, tzinfo=UTC), None, _EVERY_FIGURE),
        (*WINDOW_KEYS, *label_keys(["route"])),
    ),
]


def _alone(conn: duckdb.DuckDBPyConnection, request: SumsRequest) -> pl.DataFrame:
    return component_sums(conn, request.scope, request.keys, paired=request.paired)


def _equal(got: pl.DataFrame, want: pl.DataFrame) -> None:
    # Sums in another order may differ in the last bits; rows, order and types may not.
    assert_frame_equal(got, want, check_exact=False, rel_tol=1e-12, abs_tol=1e-9)


def test_each_answer_asked_together_is_its_answer_alone(conn: duckdb.DuckDBPyConnection) -> None:
    together = component_sums_many(conn, _REQUESTS)
    assert len(together) == len(_REQUESTS)
    for request, got in zip(_REQUESTS, together, strict=True):
        want = _alone(conn, request)
        assert (
            want.columns == [alias for _, alias in request.keys] + got.columns[len(request.keys) :]
        )
        _equal(got, want)
    assert together[0].height > 0
    assert together[4].height == 0
    # Both models are in what was read: the test reads what the batching must keep apart.
    assert set(together[0]["privacy_model"]) >= {"local", "aggregate"}


def test_an_answer_does_not_depend_on_its_neighbours(conn: duckdb.DuckDBPyConnection) -> None:
    reversed_ = component_sums_many(conn, _REQUESTS[::-1])[::-1]
    for request, got in zip(_REQUESTS, reversed_, strict=True):
        _equal(got, _alone(conn, request))
    twice = component_sums_many(conn, [_REQUESTS[1], _REQUESTS[1]])
    _equal(twice[0], twice[1])


def test_no_requests_no_statement(conn: duckdb.DuckDBPyConnection) -> None:
    assert component_sums_many(conn, []) == []
    assert run_planned(conn, []) == []


def test_plans_asked_together_answer_as_the_functions_do(conn: duckdb.DuckDBPyConnection) -> None:
    totals, *summary = run_planned(conn, [plan_fleet_totals(), *plan_cell_summary()])
    _equal(totals, fleet_totals(conn))
    _equal(cell_summary_of(summary), cell_summary(conn))


def test_keys_of_one_type_share_columns_across_requests() -> None:
    # What keeps a statement's grouping narrow: a report's label, window and part keys
    # go in shared columns; an expression of no known type gets one of its own.
    slots = _slots(_REQUESTS)
    assert slots[1] == ["_text0", "_text1"]  # a label and the part
    assert slots[2] == ["_text0", "_text1", "_time0"]  # two labels and a window end
    assert slots[3][:2] == ["_q3k0", "_q3k1"]
    assert len({name for own in slots for name in own}) < sum(map(len, slots))
