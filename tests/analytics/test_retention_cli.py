"""`quietwire retention` on real warehouse files: what it deletes, what a dry run says,
and a clear exit 2 for every bad input."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import duckdb
import pytest
import yaml
from typer.testing import CliRunner

from policies import DEFAULT_POLICY_PATH
from quietwire.cli import app
from tests.analytics.test_privacy_warehouse import T0, _envelope
from warehouse import connect, write_envelopes

# Windows of the three envelopes end at T0 + 1h, 2h, 3h; each carries one health, one
# content and two performance values. Default retention: content 7 days.
AFTER_CONTENT = (T0 + timedelta(days=7, hours=2, minutes=30)).isoformat()


@pytest.fixture
def warehouse(tmp_path: Path) -> Path:
    path = tmp_path / "warehouse.duckdb"
    conn = connect(path)
    write_envelopes(conn, [_envelope("dev-a", w) for w in range(3)])
    conn.close()
    return path


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["retention", *args])
    return result.exit_code, result.stdout, result.stderr


def _rows(path: Path) -> dict[str, int]:
    with duckdb.connect(str(path), read_only=True) as conn:
        rows = conn.execute("SELECT tier, count(*) FROM released_values GROUP BY tier")
        return {tier: n for tier, n in rows.fetchall()}


def _table_row(out: str, tier: str) -> list[str]:
    (line,) = [line for line in out.splitlines() if line.startswith(f"│ {tier} ")]
    return [cell.strip() for cell in line.strip("│").split("│")]


def test_a_dry_run_counts_and_deletes_nothing(warehouse: Path) -> None:
    code, out, err = _run("--db", str(warehouse), "--now", AFTER_CONTENT, "--dry-run")

    assert code == 0, err
    assert "dry run" in out
    # content: two of three windows ended more than 7 days before --now.
    assert _table_row(out, "content") == ["content", "7", "2026-03-02 02:30:00Z", "2", "3"]
    assert _table_row(out, "health")[3] == "0"
    assert "2 released values would be deleted" in out
    assert _rows(warehouse) == {"health": 3, "performance": 6, "content": 3}


def test_retention_deletes_each_tier_past_its_days_once(warehouse: Path) -> None:
    code, out, err = _run("--db", str(warehouse), "--now", AFTER_CONTENT)

    assert code == 0, err
    assert _table_row(out, "content") == ["content", "7", "2026-03-02 02:30:00Z", "2", "1"]
    assert "2 released values deleted" in out
    assert _rows(warehouse) == {"health": 3, "performance": 6, "content": 1}

    again = _run("--db", str(warehouse), "--now", AFTER_CONTENT)
    assert again[0] == 0
    assert "0 released values deleted" in again[1]


def test_the_policy_file_sets_the_days(warehouse: Path, tmp_path: Path) -> None:
    data = yaml.safe_load(DEFAULT_POLICY_PATH.read_text())
    data["retention"]["days"] = {"health": 30, "performance": 5, "content": 2}
    policy = tmp_path / "fleet.yaml"
    policy.write_text(yaml.safe_dump(data))
    now = (T0 + timedelta(days=6)).isoformat()

    code, out, err = _run("--db", str(warehouse), "--policy", str(policy), "--now", now)

    assert code == 0, err
    assert _rows(warehouse) == {"health": 3}
    assert _table_row(out, "performance")[1:4] == ["5", "2026-03-03 00:00:00Z", "6"]


@pytest.mark.parametrize(
    ("now", "message"),
    [
        ("2026-03-10", "has no UTC offset"),
        ("2026-03-10T00:00:00", "has no UTC offset"),
        ("last tuesday", "is not an ISO 8601 time"),
    ],
)
def test_a_bad_now_is_exit_2(warehouse: Path, now: str, message: str) -> None:
    code, _, err = _run("--db", str(warehouse), "--now", now)
    assert code == 2
    assert message in err
    assert _rows(warehouse)["content"] == 3


def test_a_bad_policy_is_exit_2_naming_file_and_key(warehouse: Path, tmp_path: Path) -> None:
    data = yaml.safe_load(DEFAULT_POLICY_PATH.read_text())
    data["retention"]["days"]["content"] = 400  # content must be the shortest
    policy = tmp_path / "bad.yaml"
    policy.write_text(yaml.safe_dump(data))

    code, _, err = _run("--db", str(warehouse), "--policy", str(policy))

    assert code == 2
    assert str(policy) in err
    assert "retention.days.content" in err
    assert _rows(warehouse)["content"] == 3


def test_a_missing_or_foreign_database_is_exit_2_and_never_created(tmp_path: Path) -> None:
    missing = tmp_path / "nope.duckdb"
    code, _, err = _run("--db", str(missing))
    assert (code, missing.exists()) == (2, False)
    assert "no such warehouse file" in err

    other = tmp_path / "other.duckdb"
    duckdb.connect(str(other)).close()
    code, _, err = _run("--db", str(other))
    assert code == 2
    assert "not a Quietwire warehouse" in err

    text = tmp_path / "notes.txt"
    text.write_text("hello")
    code, _, err = _run("--db", str(text))
    assert code == 2
    assert "not a DuckDB file" in err


def test_a_warehouse_held_by_another_process_is_exit_2(warehouse: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys; c = duckdb.connect(sys.argv[1]); print('ready', flush=True); "
            "sys.stdin.read()",
            str(warehouse),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "ready"
        code, _, err = _run("--db", str(warehouse), "--now", AFTER_CONTENT)
    finally:
        assert holder.stdin is not None
        assert holder.stdout is not None
        holder.stdin.close()  # the holder reads EOF and exits, releasing the lock
        holder.wait()
        holder.stdout.close()

    assert code == 2
    assert "stop it for the run" in err
    assert _rows(warehouse)["content"] == 3


def test_a_now_ahead_of_the_clock_deletes_nothing(warehouse: Path) -> None:
    """Deletion is for good: a `--now` in the future would delete data before its
    retention ends (all of it, at 2099). A dry run may still look ahead."""
    code, out, err = _run("--db", str(warehouse), "--now", "2099-01-01T00:00:00Z")
    assert code == 2
    assert "ahead of this machine's clock" in err
    assert _rows(warehouse) == {"health": 3, "performance": 6, "content": 3}

    code, out, err = _run("--db", str(warehouse), "--now", "2099-01-01T00:00:00Z", "--dry-run")
    assert code == 0, err
    assert "12 released values would be deleted" in out


@pytest.mark.parametrize(
    "now", ["0001-01-01T00:00:00Z", "9999-12-31T23:59:59-01:00", "1969-12-31T00:00:00Z"]
)
def test_a_time_outside_the_calendar_it_reads_is_a_clear_error(warehouse: Path, now: str) -> None:
    code, _, err = _run("--db", str(warehouse), "--now", now, "--dry-run")
    assert code == 2
    assert "outside the years 1970 to 9000" in err
