"""`quietwire query ...`: each analytics query from the command line, in three formats."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from quietwire.cli import app
from tests.analytics._fleet import write_cli_fleet


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_cli_fleet(tmp_path_factory.mktemp("wh") / "fleet.duckdb")


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


# The fixture's fleet has no inference.requests, releases no scalar totals (which
# grand totals and the fleet mean read under the local model) and withholds nothing: an
# empty answer, not an error.
_EMPTY = {"requests", "grand-totals", "fleet-mean", "suppressed"}

QUERIES = [
    ("totals",),
    ("signal-totals", "--signal", "test.requests", "--by", "route"),
    ("requests", "--by", "route"),
    ("grand-totals", "--signal", "test.requests"),
    ("means", "--signal", "test.latency", "--by", "route,model"),
    ("fleet-mean", "--signal", "test.latency"),
    ("buckets", "--signal", "test.latency", "--by", "route"),
    ("cells",),
    ("devices",),
    ("suppressed",),
]


@pytest.mark.parametrize("query", QUERIES, ids=lambda q: q[0])
def test_every_query_prints_json_csv_and_table(warehouse: Path, query: tuple[str, ...]) -> None:
    base = ("query", *query, "--db", str(warehouse))
    code, out, err = _run(*base, "--format", "json")
    assert code == 0, err
    records = json.loads(out)
    if query[0] in _EMPTY:
        assert records == []
        code, out, _ = _run(*base)
        assert code == 0
        assert "no rows" in out
        return
    assert records, out
    code, out, err = _run(*base, "--format", "csv")
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == len(records)
    assert set(rows[0]) == set(records[0])
    code, out, err = _run(*base)
    assert code == 0, err
    assert out.strip()


def test_means_carry_intervals(warehouse: Path) -> None:
    code, out, _ = _run(
        "query",
        "means",
        "--db",
        str(warehouse),
        "--signal",
        "test.latency",
        "--over-range",
        "--format",
        "json",
    )
    assert code == 0
    rows = json.loads(out)
    assert len(rows) == 4  # route x model
    assert all(r["ci_low"] < r["mean"] < r["ci_high"] for r in rows)


def test_devices_count_the_fleet(warehouse: Path) -> None:
    code, out, _ = _run("query", "devices", "--db", str(warehouse), "--format", "json")
    assert code == 0
    assert [r["devices"] for r in json.loads(out)] == [30, 30]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--signal", "test.latency", "--by", "nolabel;drop"), "label"),
        (("--signal", "test.latency", "--level", "1.5"), "level"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(
    warehouse: Path, args: tuple[str, ...], message: str
) -> None:
    code, _, err = _run("query", "means", "--db", str(warehouse), *args)
    assert code == 2
    assert message in err
    assert "Traceback" not in err


def test_missing_warehouse_is_exit_2(tmp_path: Path) -> None:
    code, _, err = _run("query", "totals", "--db", str(tmp_path / "none.duckdb"))
    assert code == 2
    assert "none.duckdb" in err


@pytest.mark.parametrize("query", ["means", "grand-totals", "totals"])
def test_a_signal_the_warehouse_does_not_hold_is_exit_2_naming_those_it_does(
    warehouse: Path, query: str
) -> None:
    code, _, err = _run("query", query, "--db", str(warehouse), "--signal", "test.latncy")
    assert code == 2
    assert "unknown signal 'test.latncy'" in err
    assert "test.latency" in err  # what it does hold
