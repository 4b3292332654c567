"""The `quietwire report` command on real warehouse files."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest
from typer.testing import CliRunner

from quietwire.cli import app
from tests.analytics._fleet import build_fleet
from warehouse import connect, write_envelopes

_ROUTES = ("local", "edge", "cloud")


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("wh") / "fleet.duckdb"
    cells = [{"route": r, "model": m} for r in _ROUTES for m in ("m1", "m2")]
    items, _ = build_fleet(devices=40, windows=3, counter_cells=cells, hist_cells=cells)
    conn = connect(path)
    write_envelopes(conn, items)
    conn.close()
    return path


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_report_prints_the_table_and_writes_html(warehouse: Path, tmp_path: Path) -> None:
    html = tmp_path / "out" / "report.html"
    code, out, err = _run("report", "--db", str(warehouse), "--html", str(html))
    assert code == 0, err
    assert "fleet summary" in out
    assert "route=local" in out
    assert "mean" in out
    page = html.read_text()
    assert page.count("<svg") >= 2  # a plot per signal
    assert "test.requests" in page
    assert "http" not in page.split("<svg")[0].lower()


def test_report_json_lists_every_cell(warehouse: Path) -> None:
    code, out, _ = _run("report", "--db", str(warehouse), "--format", "json", "--level", "0.9")
    assert code == 0
    records = json.loads(out)["cells"]
    counters = [r for r in records if r["kind"] == "counter"]
    assert len(counters) == 3 * 6  # windows x cells
    first = counters[0]
    assert first["ci_low"] < first["estimate"] < first["ci_high"]
    assert first["devices"] == 40
    assert first["interval"] == "normal"


def test_report_filters_by_signal(warehouse: Path) -> None:
    code, out, _ = _run(
        "report", "--db", str(warehouse), "--format", "json", "--signal", "test.latency"
    )
    assert code == 0
    assert {r["signal"] for r in json.loads(out)["cells"]} == {"test.latency"}
    code, _, err = _run("report", "--db", str(warehouse), "--signal", "no.such")
    assert code == 2
    assert "no released values for signal 'no.such'" in err


@pytest.mark.parametrize("level", ["1.5", "0", "-0.1"])
def test_bad_level_exits_2_with_one_line(warehouse: Path, level: str) -> None:
    code, out, err = _run("report", "--db", str(warehouse), "--level", level)
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1
    assert "confidence level must be strictly between 0 and 1" in err


def test_missing_db_exits_2_with_one_line(tmp_path: Path) -> None:
    code, _, err = _run("report", "--db", str(tmp_path / "nope.duckdb"))
    assert code == 2
    assert err.strip() == f"quietwire: error: {tmp_path / 'nope.duckdb'}: no such warehouse file"
    assert not (tmp_path / "nope.duckdb").exists()  # a report never creates a warehouse


def test_db_without_schema_or_not_duckdb_exits_2(tmp_path: Path) -> None:
    other = tmp_path / "other.duckdb"
    conn = duckdb.connect(str(other))
    conn.execute("CREATE TABLE t (x INTEGER)")
    conn.close()
    code, _, err = _run("report", "--db", str(other))
    assert code == 2
    assert "not a Quietwire warehouse" in err
    assert err.count("\n") == 1
    text = tmp_path / "notes.txt"
    text.write_text("hello, not a database\n")
    code, _, err = _run("report", "--db", str(text))
    assert code == 2
    assert "not a DuckDB file" in err
    assert err.count("\n") == 1


def test_help_lists_report_and_demo_options() -> None:
    code, out, _ = _run("--help")
    assert code == 0
    assert "report" in out
    assert "demo" in out
    code, out, _ = _run("demo", "--help")
    for option in ("--devices", "--windows", "--db", "--kafka", "--html", "--seed"):
        assert option in out


def test_demo_refuses_a_malformed_kafka_bootstrap_before_running(tmp_path: Path) -> None:
    db = tmp_path / "demo.duckdb"
    code, _, err = _run("demo", "--kafka", ":::", "--devices", "1", "--db", str(db))
    assert code == 2
    assert "is not host:port" in err
    assert "Traceback" not in err
    assert not db.exists()
