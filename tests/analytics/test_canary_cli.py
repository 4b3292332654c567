"""`quietwire canary` on warehouse files: the verdict as exit code, table, JSON and CSV, and
one clear line for bad input."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from analytics import CanaryVerdict
from analytics.cli import app
from policies import DEFAULT_POLICY_PATH
from tests.analytics._aggregates import AggregateTruth, histogram_batches, insert_batches
from warehouse import connect

LATENCY = "gen_ai.client.operation.duration"
OLD, NEW = "qwen2.5-7b@1.0", "qwen2.5-7b@1.1"


def _warehouse(path: Path, canary_means: tuple[float, float]) -> Path:
    """Latency of two routes and two versions; the canary's means per route as given."""
    cells = [{"route": r, "model": m} for r in ("local", "edge") for m in (OLD, NEW)]
    means = [canary_means[i // 2] if c["model"] == NEW else 1.0 for i, c in enumerate(cells)]
    conn = connect(path)
    try:
        batches = histogram_batches(
            LATENCY,
            0,
            cells,
            np.random.default_rng(5),
            mean=means,
            events=(20_000, 20_001),
            count_scale=20.0,
            sum_scale=2000.0,
        )
        insert_batches(conn, batches, AggregateTruth())
    finally:
        conn.close()
    return path


@pytest.fixture(scope="module")
def slower(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _warehouse(tmp_path_factory.mktemp("c") / "slower.duckdb", (1.3, 1.0))


@pytest.fixture(scope="module")
def same(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _warehouse(tmp_path_factory.mktemp("c") / "same.duckdb", (1.0, 1.0))


@pytest.fixture(scope="module")
def latency_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default policy judging latency only (this warehouse has no other signal)."""
    data = yaml.safe_load(DEFAULT_POLICY_PATH.read_text(encoding="utf-8"))
    data["canary"]["metrics"] = {"latency": data["canary"]["metrics"]["latency"]}
    path = tmp_path_factory.mktemp("p") / "policy.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["canary", *args])
    return result.exit_code, result.stdout, result.stderr


def test_rollback_exits_3_with_the_evidence(slower: Path, latency_policy: Path) -> None:
    code, out, _ = _run("--db", str(slower), "--policy", str(latency_policy))
    assert code == 3
    assert f"Canary model={NEW} against {OLD}" in out
    assert "ROLLBACK" in out
    assert "regression" in out
    assert "verdict: rollback (exit 3)" in out


def test_json_is_the_verdict_model(slower: Path, latency_policy: Path) -> None:
    code, out, _ = _run("--db", str(slower), "--policy", str(latency_policy), "--format", "json")
    assert code == 3
    verdict = CanaryVerdict.model_validate_json(out)
    assert verdict.verdict == "rollback"
    record = json.loads(out)
    local = next(r for r in record["routes"] if r["route"] == "local")
    latency = local["metrics"][0]
    assert set(latency) == {
        "metric", "signal", "effect", "estimate", "ci_low", "ci_high", "interval",
        "threshold", "canary", "baseline", "status", "reason",
    }  # fmt: skip
    assert latency["ci_low"] > 0.1
    assert latency["canary"]["events"] > 19_000


def test_promote_exits_0_and_csv_has_a_row_per_route_and_metric(
    same: Path, latency_policy: Path
) -> None:
    code, out, _ = _run("--db", str(same), "--policy", str(latency_policy), "--format", "csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(r["route"], r["metric"], r["status"]) for r in rows] == [
        ("edge", "latency", "pass"),
        ("local", "latency", "pass"),
    ]
    assert {r["verdict"] for r in rows} == {"promote"}


def test_hold_exits_4(same: Path, tmp_path: Path) -> None:
    # Fewer events a side than the policy asks for: not enough evidence, hold.
    data = yaml.safe_load(DEFAULT_POLICY_PATH.read_text(encoding="utf-8"))
    latency = data["canary"]["metrics"]["latency"] | {"min_events": 50_000}
    data["canary"]["metrics"] = {"latency": latency}
    policy = tmp_path / "p.yaml"
    policy.write_text(yaml.safe_dump(data), encoding="utf-8")
    code, out, _ = _run("--db", str(same), "--policy", str(policy))
    assert code == 4
    assert "insufficient" in out
    assert "verdict: hold (exit 4)" in out


def test_without_a_canary_section_latency_is_judged(same: Path, tmp_path: Path) -> None:
    data = yaml.safe_load(DEFAULT_POLICY_PATH.read_text(encoding="utf-8"))
    del data["canary"]
    policy = tmp_path / "p.yaml"
    policy.write_text(yaml.safe_dump(data), encoding="utf-8")
    code, _, err = _run("--db", str(same), "--policy", str(policy))
    assert code == 0
    assert "has no canary: section; judging latency only" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--canary", "nope", "--baseline", OLD], "no figures of model='nope'"),
        (["--canary", OLD, "--baseline", OLD], "the same cohort"),
        (["--label", "Model"], "--label 'Model': String should match pattern"),
        (["--label", "route"], "cohort_label and route_label must differ"),
        (["--level", "1.5"], "confidence level must be strictly between 0 and 1"),
        (["--since", "yesterday"], "--since 'yesterday' is not an ISO 8601 time"),
        (["--until", "2026-03-02T00:00:00"], "--until '2026-03-02T00:00:00' has no UTC offset"),
    ],
)
def test_bad_input_exits_2_with_one_line(
    slower: Path, latency_policy: Path, args: list[str], message: str
) -> None:
    code, out, err = _run("--db", str(slower), "--policy", str(latency_policy), *args)
    assert code == 2
    assert not out
    assert err.startswith("quietwire: error: ")
    assert message in err
    assert err.count("\n") == 1


def test_a_refused_label_reads_as_the_reason_not_as_pydantic(slower: Path) -> None:
    code, _, err = _run("--db", str(slower), "--label", "route")
    assert code == 2
    assert err == ("quietwire: error: --label 'route': cohort_label and route_label must differ\n")


def test_a_missing_warehouse_or_bad_policy_exits_2(slower: Path, tmp_path: Path) -> None:
    code, _, err = _run("--db", str(tmp_path / "absent.duckdb"))
    assert code == 2
    assert "no such warehouse file" in err
    bad = tmp_path / "bad.yaml"
    data = yaml.safe_load(DEFAULT_POLICY_PATH.read_text(encoding="utf-8"))
    data["canary"]["level"] = 2
    bad.write_text(yaml.safe_dump(data), encoding="utf-8")
    code, _, err = _run("--db", str(slower), "--policy", str(bad))
    assert code == 2
    assert "canary.level" in err


def test_the_window_range_selects_what_is_compared(slower: Path, latency_policy: Path) -> None:
    # The warehouse's one window starts on 2026-03-02: nothing is left after it.
    code, _, err = _run(
        "--db", str(slower), "--policy", str(latency_policy), "--since", "2026-03-03T00:00:00Z"
    )
    assert code == 2
    assert "no 'model' cohort to compare" in err


def test_help_names_the_options_and_the_exit_codes() -> None:
    result = CliRunner().invoke(app, ["canary", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for option in ("--db", "--policy", "--canary", "--baseline", "--label", "--level",
                   "--since", "--until", "--format"):  # fmt: skip
        assert option in result.stdout
    assert "0 promote, 3 rollback, 4 hold, 2 bad input" in result.stdout
    top = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert "canary" in top.stdout
