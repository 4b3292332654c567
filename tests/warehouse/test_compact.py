"""`warehouse.compact` never loses rows, Kafka offsets or keys; a failed copy leaves the
file as it was; `ErasureCompactor` batches rewrites; retention runs are recorded."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import duckdb
import pytest

import warehouse._compact as compact_module
from ingest import DuckDBSink
from schemas import Tier
from tests.analytics.test_privacy_warehouse import HOUR, T0, _deletion, _envelope
from warehouse import (
    CompactionError,
    ErasureCompactor,
    PartitionOffset,
    apply_retention,
    compact,
    connect,
    pending_erasures,
    stored_offsets,
    write_envelopes,
)

DAYS = {Tier.HEALTH: 30, Tier.PERFORMANCE: 10, Tier.CONTENT: 7}


def _contents(conn: duckdb.DuckDBPyConnection) -> dict[str, list[tuple[object, ...]]]:
    tables = [
        str(r[0])
        for r in conn.execute(
            "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main' ORDER BY 1"
        ).fetchall()
    ]
    return {t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in tables}


@pytest.fixture
def filled(tmp_path: Path) -> Path:
    path = tmp_path / "w.duckdb"
    conn = connect(path)
    write_envelopes(
        conn,
        [_envelope(d, w) for d in ("dev-a", "dev-b") for w in range(3)],
        group="g",
        offsets=[PartitionOffset("t", 0, 6), PartitionOffset("t", 1, 9)],
    )
    write_envelopes(conn, [_deletion("dev-a", Tier.CONTENT, T0 + 5 * HOUR)])
    conn.close()
    return path


def test_a_rewrite_keeps_every_row_offset_and_key(filled: Path) -> None:
    conn = connect(filled)
    extra = _envelope("dev-c", 0)
    write_envelopes(conn, [extra])
    before = _contents(conn)
    done = compact(conn, filled)
    assert done.erasures == 1
    assert done.rows == sum(len(rows) for rows in before.values())

    conn = connect(filled)
    after = _contents(conn)
    erasures = after.pop("erasures")
    assert after == {t: rows for t, rows in before.items() if t != "erasures"}
    assert [e[:4] for e in erasures] == [e[:4] for e in before["erasures"]]
    assert all(e[4] is not None for e in erasures)  # erased_at set in the new file
    assert stored_offsets(conn, "g") == {("t", 0): 6, ("t", 1): 9}
    # Keys survive: a replayed envelope is still a duplicate, offsets still replace.
    replay = write_envelopes(conn, [extra], group="g", offsets=[PartitionOffset("t", 0, 7)])
    assert (replay.inserted, replay.duplicates) == (0, 1)
    assert stored_offsets(conn, "g")[("t", 0)] == 7
    with pytest.raises(duckdb.ConstraintException):
        conn.execute("INSERT INTO envelopes SELECT * FROM envelopes LIMIT 1")
    conn.close()
    leftovers = sorted(p.name for p in filled.parent.iterdir())
    assert leftovers == ["w.duckdb"]


def test_a_copy_that_differs_aborts_and_leaves_the_file(
    filled: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = compact_module._fingerprint

    def differs_in_the_copy(conn: duckdb.DuckDBPyConnection, qualified: str) -> tuple[int, int]:
        rows, digest = real(conn, qualified)
        return (rows - 1, digest) if qualified.startswith("qw_compacted.") else (rows, digest)

    monkeypatch.setattr(compact_module, "_fingerprint", differs_in_the_copy)
    conn = connect(filled)
    before = _contents(conn)
    with pytest.raises(CompactionError, match="the copy differs") as failed:
        compact(conn, filled)
    assert not failed.value.connection_closed
    assert _contents(conn) == before  # the connection is still open, nothing changed
    assert pending_erasures(conn) == 1
    conn.close()
    assert sorted(p.name for p in filled.parent.iterdir()) == ["w.duckdb"]


def test_a_leftover_from_a_crashed_rewrite_is_replaced(filled: Path) -> None:
    stale = filled.with_name(filled.name + ".compacting")
    stale.write_bytes(b"half a file")
    conn = connect(filled)
    compact(conn, filled)
    assert not stale.exists()
    with duckdb.connect(str(filled), read_only=True) as check:
        assert check.execute("SELECT count(*) FROM envelopes").fetchall() == [(6,)]


def test_the_compactor_rewrites_at_most_once_per_interval(filled: Path) -> None:
    now = [100.0]
    compactor = ErasureCompactor(filled, min_interval=60.0, clock=lambda: now[0])
    conn = connect(filled)
    conn, done = compactor.maybe_compact(conn)
    assert done is not None  # the first pending deletion: at once
    conn, done = compactor.maybe_compact(conn)
    assert done is None  # nothing pending
    # The check leaves no result open: a caller's next relation on the connection works.
    assert conn.sql("SELECT count(*) AS n FROM envelopes").pl()["n"].to_list() == [6]

    write_envelopes(conn, [_deletion("dev-b", Tier.CONTENT, T0 + 5 * HOUR)])
    now[0] += 30
    conn, done = compactor.maybe_compact(conn)
    assert (done, pending_erasures(conn)) == (None, 1)  # within the interval: waits
    now[0] += 31
    conn, done = compactor.maybe_compact(conn)
    assert done is not None
    assert pending_erasures(conn) == 0

    write_envelopes(conn, [_deletion("dev-a", Tier.HEALTH, T0 + 5 * HOUR)])
    conn, done = compactor.maybe_compact(conn, force=True)  # closing: no waiting
    assert done is not None
    conn.close()


def test_retention_records_its_run_per_tier_and_table(filled: Path) -> None:
    conn = connect(filled)
    run = apply_retention(conn, DAYS, T0 + timedelta(days=12))
    rows = conn.execute(
        "SELECT tier, table_name, rows_deleted, keep_days, cutoff FROM retention_runs "
        "WHERE run_id = ? ORDER BY tier, table_name",
        [run.run_id],
    ).fetchall()
    # Every tier and table, zeros included; dead letters (no tier) under the shortest-kept.
    assert len(rows) == 3 * 3 + 1
    assert {(t, table) for t, table, *_ in rows if table == "dead_letters"} == {
        (min(DAYS, key=lambda t: DAYS[t]).value, "dead_letters")
    }
    deleted = {(t, table): n for t, table, n, _, _ in rows}
    assert deleted[("content", "released_values")] == 3  # dev-b's; dev-a's went by request
    assert deleted[("performance", "released_values")] == 12
    assert deleted[("health", "released_values")] == 0
    assert run.by_tier == {"health": 0, "performance": 12, "content": 3}
    erasure = conn.execute(
        "SELECT rows_deleted, erased_at FROM erasures WHERE source = 'retention'"
    ).fetchall()
    assert erasure == [(15, None)]
    nothing = apply_retention(conn, DAYS, T0 + timedelta(days=12))
    assert nothing.total == 0
    assert conn.execute(
        "SELECT count(*) FROM erasures WHERE source_id = ?", [nothing.run_id]
    ).fetchall() == [(0,)]
    conn.close()


def test_the_sink_erases_the_first_deletion_at_once_and_the_next_by_closing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "w.duckdb"
    sink = DuckDBSink(path, compact_interval=3600)
    sink.write([_envelope(d, w) for d in ("dev-a", "dev-b") for w in range(3)])
    sink.write([_deletion("dev-a", Tier.CONTENT, T0 + 5 * HOUR)])
    assert pending_erasures(sink.connection) == 0  # erased at once
    sink.write([_deletion("dev-b", Tier.CONTENT, T0 + 5 * HOUR)])
    assert pending_erasures(sink.connection) == 1  # within the interval: waits
    assert sink.compact_if_due() is None
    sink.close()  # erases what is pending before closing
    with duckdb.connect(str(path), read_only=True) as conn:
        assert pending_erasures(conn) == 0
        assert conn.execute("SELECT count(*) FROM erasures").fetchall() == [(2,)]
