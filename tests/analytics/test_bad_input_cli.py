"""Bad input to the `quietwire` analytics commands names the real problem, on one line
with exit code 2, before any work and without reaching the network: a signal, kind or
label the warehouse does not hold, a flag that would be ignored, a range that ends
before it starts, a file of the wrong kind, an output path that cannot be written."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import duckdb
import pytest
from typer.testing import CliRunner

from quietwire.cli import app
from tests.analytics._fleet import write_cli_fleet
from warehouse import duckdb_file_problem

COUNTER, HISTOGRAM = "test.requests", "test.latency"


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_cli_fleet(tmp_path_factory.mktemp("wh") / "fleet.duckdb")


@pytest.fixture
def sqlite_file(tmp_path: Path) -> Path:
    path = tmp_path / "audit.sqlite3"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE audit (seq INTEGER)")
    db.commit()
    db.close()
    return path


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def _refused(code: int, out: str, err: str, *messages: str) -> None:
    assert code == 2, err
    assert out == ""
    assert err.startswith("quietwire: error: ")
    assert err.count("\n") == 1, err
    for message in messages:
        assert message in err


_SIDES = ("--a", "model=m1", "--b", "model=m2", "--replicates", "200", "--alpha", "0.05")


def test_drift_names_an_unknown_signal_and_those_it_holds(warehouse: Path) -> None:
    code, out, err = _run("drift", "--db", str(warehouse), "--signal", "test.latncy", *_SIDES)
    _refused(code, out, err, "unknown signal 'test.latncy'", HISTOGRAM)


def test_drift_says_a_counter_is_not_a_histogram(warehouse: Path) -> None:
    code, out, err = _run("drift", "--db", str(warehouse), "--signal", COUNTER, *_SIDES)
    _refused(code, out, err, f"'{COUNTER}' is a counter, not a histogram", HISTOGRAM)


def test_drift_names_an_unknown_label_and_the_signals_labels(warehouse: Path) -> None:
    code, out, err = _run(
        "drift", "--db", str(warehouse), "--signal", HISTOGRAM,
        "--a", "modle=m1", "--b", "model=m2", "--replicates", "200", "--alpha", "0.05",
    )  # fmt: skip
    _refused(code, out, err, "unknown label 'modle'", "its labels: model, route")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("means", "--signal", COUNTER), f"'{COUNTER}' is a counter, not a histogram"),
        (("fleet-mean", "--signal", COUNTER), "not a histogram"),
        (("buckets", "--signal", COUNTER), "not a histogram"),
        (("signal-totals", "--signal", HISTOGRAM), f"'{HISTOGRAM}' is a histogram, not a counter"),
        (("means", "--signal", HISTOGRAM, "--by", "route,modle"), "--by: unknown label 'modle'"),
        (("signal-totals", "--signal", COUNTER, "--by", "nolabel"), "unknown label 'nolabel'"),
    ],
)
def test_query_names_a_signal_of_the_wrong_kind_or_an_unknown_label(
    warehouse: Path, args: tuple[str, ...], message: str
) -> None:
    code, out, err = _run("query", *args, "--db", str(warehouse))
    _refused(code, out, err, message)


_BACKWARDS = ("--since", "2026-03-05T00:00:00Z", "--until", "2026-03-01T00:00:00Z")


@pytest.mark.parametrize(
    "command",
    [
        ("cost",),
        ("cost", "what-if", "--move-cloud", "0.5", "--to", "edge"),
        ("canary",),
        ("query", "totals"),
    ],
    ids=lambda c: " ".join(c[:2]),
)
def test_a_range_that_ends_before_it_starts_is_named(warehouse: Path, command: tuple[str]) -> None:
    code, out, err = _run(*command, "--db", str(warehouse), *_BACKWARDS)
    _refused(code, out, err, "--since 2026-03-05T00:00:00+00:00 is not before --until")


def test_drift_shares_the_range_check(warehouse: Path) -> None:
    code, out, err = _run(
        "drift", "--db", str(warehouse), "--signal", HISTOGRAM, *_SIDES,
        "--a-since", "2026-03-05T00:00:00Z", "--a-until", "2026-03-05T00:00:00Z",
    )  # fmt: skip
    _refused(code, out, err, "--a-since 2026-03-05T00:00:00+00:00 is not before --a-until")


def test_report_refuses_html_options_without_html(warehouse: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("version: 1\nprivacy: [unclosed\n", encoding="utf-8")
    code, out, err = _run("report", "--db", str(warehouse), "--policy", str(broken))
    _refused(code, out, err, "--policy only applies to the HTML report's sections", "--html")
    log = tmp_path / "audit.sqlite3"
    code, out, err = _run(
        "report", "--db", str(warehouse), "--policy", str(broken), "--audit-log", str(log)
    )
    _refused(code, out, err, "--policy and --audit-log only apply")


def test_report_checks_the_html_path_before_the_work(warehouse: Path, tmp_path: Path) -> None:
    code, out, err = _run("report", "--db", str(warehouse), "--html", str(tmp_path))
    _refused(code, out, err, f"--html {tmp_path} is a directory")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, out, err = _run("report", "--db", str(warehouse), "--html", str(blocker / "r.html"))
    _refused(code, out, err, "is a file, not a directory")


def test_cost_export_checks_the_focus_path_before_the_work(warehouse: Path, tmp_path: Path) -> None:
    target = tmp_path / "missing" / "focus.csv"
    code, out, err = _run("cost", "export", "--db", str(warehouse), "--focus", str(target))
    _refused(code, out, err, f"the directory {target.parent} does not exist")


@pytest.mark.parametrize(
    "command",
    [("report",), ("query", "totals"), ("cost",), ("audit", "report")],
    ids=lambda c: " ".join(c),
)
def test_an_sqlite_file_as_warehouse_is_named_and_never_opened_by_duckdb(
    sqlite_file: Path, command: tuple[str, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    """DuckDB reads an SQLite file through an extension it downloads: the file is
    refused from its header, before DuckDB sees it."""

    def no_connect(*args: object, **kwargs: object) -> None:
        raise AssertionError("DuckDB opened a file that is not DuckDB's")

    monkeypatch.setattr(duckdb, "connect", no_connect)
    code, out, err = _run(*command, "--db", str(sqlite_file))
    _refused(code, out, err, f"{sqlite_file}: not a DuckDB file (it is an SQLite database)")


def test_duckdb_file_problem_tells_what_a_file_is(tmp_path: Path, sqlite_file: Path) -> None:
    assert duckdb_file_problem(tmp_path / "absent.duckdb") is None
    (tmp_path / "empty.duckdb").write_bytes(b"")
    assert duckdb_file_problem(tmp_path / "empty.duckdb") is None
    duckdb.connect(str(tmp_path / "real.duckdb")).close()
    assert duckdb_file_problem(tmp_path / "real.duckdb") is None
    assert duckdb_file_problem(sqlite_file) == "not a DuckDB file (it is an SQLite database)"
    (tmp_path / "notes.txt").write_text("hello")
    assert duckdb_file_problem(tmp_path / "notes.txt") == "not a DuckDB file"
    assert duckdb_file_problem(tmp_path) == "a directory, not a DuckDB file"


def test_a_directory_where_a_file_is_expected_is_named(warehouse: Path, tmp_path: Path) -> None:
    folder = tmp_path / "folder"
    folder.mkdir()
    code, out, err = _run(
        "report", "--db", str(warehouse), "--html", str(tmp_path / "r.html"),
        "--audit-log", str(folder),
    )  # fmt: skip
    _refused(code, out, err, f"{folder}: a directory, not an audit log file")
    code, out, err = _run("audit", "verify", "--log", str(folder))
    _refused(code, out, err, "a directory, not an audit log file")
    code, out, err = _run("audit", "verify", "--log", str(warehouse), "--audit-key", str(folder))
    _refused(code, out, err, f"--audit-key {folder} is a directory, not a key file")
    code, out, err = _run("report", "--db", str(folder))
    _refused(code, out, err, f"{folder}: a directory, not a DuckDB file")


def test_a_policy_that_is_not_yaml_is_one_line_naming_file_and_line(
    warehouse: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("version: 1\nprivacy: [unclosed\n", encoding="utf-8")
    code, out, err = _run("cost", "--db", str(warehouse), "--policy", str(broken))
    _refused(code, out, err, f"{broken}: not valid YAML at line 3, column 1", "from line 2")
    assert "<unicode string>" not in err
