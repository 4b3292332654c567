"""`quietwire cost` on a warehouse file: the report in three formats, the FOCUS export,
the what-if, and one line with exit code 2 for every bad input."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

from analytics._cost import price_cells
from analytics._cost_cli import _what_if_table
from analytics._cost_focus import read_focus
from analytics._cost_whatif import project_move
from policies import DEFAULT_POLICY_PATH
from quietwire.cli import app
from tests.analytics._cost_fleet import COST, build_cost_fleet, hand_measured
from warehouse import connect

_MODEL = "qwen2.5-7b@1.0"  # priced by the default policy


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cost") / "warehouse.duckdb"
    conn = connect(path)
    build_cost_fleet(conn, 2, seed=4, model=_MODEL)
    conn.close()
    return path


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["cost", *args])
    return result.exit_code, result.stdout, result.stderr


def test_the_report_table_shows_each_route(warehouse: Path) -> None:
    code, out, err = _run("--db", str(warehouse))
    assert code == 0, err
    assert "Cost per route and model version (USD; intervals at 95%)" in out
    assert "not an invoice" in out
    for route in ("cloud", "edge", "local"):
        assert f" {route} " in out


def test_the_report_as_json_carries_every_cell_and_its_interval(warehouse: Path) -> None:
    code, out, err = _run("--db", str(warehouse), "--format", "json", "--level", "0.9")
    assert code == 0, err
    records = json.loads(out)
    assert len(records) == 6  # two regions, three routes
    for record in records:
        assert record["currency"] == "USD"
        assert record["level"] == 0.9
        assert record["charge_period_start"].endswith("Z")
        assert record["cost_low"] <= record["cost"] <= record["cost_high"]


def test_the_report_as_csv_has_a_header_and_a_row_per_cell(warehouse: Path) -> None:
    code, out, err = _run("--db", str(warehouse), "--format", "csv")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 7
    header = lines[0].split(",")
    assert {"route", "model", "cost", "cost_low", "cost_per_inference"} <= set(header)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_export_writes_focus_rows(warehouse: Path, tmp_path: Path, suffix: str) -> None:
    target = tmp_path / f"focus{suffix}"
    code, _, err = _run("export", "--db", str(warehouse), "--focus", str(target))
    assert code == 0, err
    # Two regions: cloud input and output, edge, local.
    assert f"8 FOCUS rows written to {target}" in err
    rows = read_focus(target)
    assert rows.height == 8
    assert set(rows["RegionId"]) == {"r000", "r001"}
    assert set(rows["x_ModelVersion"]) == {_MODEL}


def test_what_if_projects_the_move(warehouse: Path) -> None:
    code, out, err = _run(
        "what-if",
        "--db",
        str(warehouse),
        "--move-cloud",
        "0.3",
        "--to",
        "edge",
        "--format",
        "json",
    )
    assert code == 0, err
    (record,) = json.loads(out)
    assert record["target"] == "edge"
    assert record["share"] == 0.3
    assert record["change_low"] <= record["change"] <= record["change_high"]
    code, out, err = _run("what-if", "--db", str(warehouse), "--move-cloud", "0.3", "--to", "local")
    assert code == 0, err
    assert "30% of cloud to local" in out


def test_the_what_if_table_says_which_cells_it_left_out_and_why() -> None:
    requests, latency, tokens = hand_measured()
    # No edge latency: the edge cell is in no sum, and cloud traffic cannot move there.
    latency = latency.filter(pl.col("route") != "edge")
    priced = price_cells(COST, requests, latency, tokens, 0.95)
    frame = project_move(COST, priced, 0.5, "edge", 0.95, 5)
    console = Console(record=True, width=300)
    console.print(_what_if_table(frame, 0.95))
    text = " ".join(console.export_text().split())
    assert "cells left out" in text
    assert "EUR │ 2 │" in text
    assert "not estimable at the what-if's level" in text
    assert "k = 5 estimates" in text
    assert "stay on cloud" in text


def _no_cost_policy(tmp_path: Path) -> Path:
    data = yaml.safe_load(DEFAULT_POLICY_PATH.read_text(encoding="utf-8"))
    del data["cost"]
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["what-if", "--move-cloud", "1.5", "--to", "edge"], "must be in [0, 1], got 1.5"),
        (["what-if", "--move-cloud", "0.3", "--to", "cloud"], "edge or local, not 'cloud'"),
        (["export", "--focus", "out.xlsx"], "a FOCUS export is .csv or .parquet, not '.xlsx'"),
        (["--level", "1.5"], "confidence level must be strictly between 0 and 1"),
        (["--since", "yesterday"], "--since 'yesterday' is not an ISO 8601 time"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(
    warehouse: Path, args: list[str], message: str
) -> None:
    if args[0] in ("what-if", "export"):
        args = [args[0], "--db", str(warehouse), *args[1:]]
    else:
        args = ["--db", str(warehouse), *args]
    code, out, err = _run(*args)
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith("quietwire: error: ")
    assert message in err


def test_a_missing_warehouse_or_cost_model_is_exit_2(warehouse: Path, tmp_path: Path) -> None:
    code, _, err = _run("--db", str(tmp_path / "none.duckdb"))
    assert code == 2
    assert "no such warehouse file" in err
    code, _, err = _run("--db", str(warehouse), "--policy", str(_no_cost_policy(tmp_path)))
    assert code == 2
    assert "the policy has no cost: section" in err


_WHAT_IF = ("what-if", "--move-cloud", "0.3", "--to", "edge")
_EXPORT = ("export", "--focus", "out.csv")


@pytest.mark.parametrize("command", [(), _EXPORT, _WHAT_IF])
def test_without_db_each_says_the_option_is_missing_and_exits_2(command: tuple[str, ...]) -> None:
    code, out, err = _run(*command)
    assert code == 2
    assert out == ""
    assert "Missing option '--db'." in err
    assert f"Usage: quietwire cost {command[0] + ' ' if command else ''}[OPTIONS]" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("command", [("cost",), ("cost", "export"), ("cost", "what-if")])
def test_the_help_says_db_is_required(command: tuple[str, ...]) -> None:
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.stderr
    (line,) = [line for line in result.stdout.splitlines() if "--db" in line]
    if command == ("cost",):  # not at the group's level: `cost export --db PATH` parses
        assert "Required: here, or after the subcommand's name (export, what-if)." in line
    else:
        assert "*  --db" in line
        assert "[required]" in line


def test_db_may_come_before_the_subcommands_name(warehouse: Path, tmp_path: Path) -> None:
    target = tmp_path / "focus.csv"
    code, _, err = _run("--db", str(warehouse), "export", "--focus", str(target))
    assert code == 0, err
    assert f"8 FOCUS rows written to {target}" in err
    code, out, err = _run("--db", str(warehouse), *_WHAT_IF, "--format", "json")
    assert code == 0, err
    assert json.loads(out)[0]["target"] == "edge"
    # One after the subcommand's name wins.
    code, _, err = _run("--db", str(warehouse), *_WHAT_IF, "--db", str(tmp_path / "none.duckdb"))
    assert code == 2
    assert "none.duckdb: no such warehouse file" in err
