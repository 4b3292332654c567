"""`python -m ingest aggregate --once` on a warehouse, against a helper on loopback."""

from __future__ import annotations

from pathlib import Path

import pytest
from nacl.public import PrivateKey

from ingest import DuckDBSink
from ingest._cli import main
from ingest.aggregation import HelperSettings, serve_helper
from policies import dump_policy
from tests.ingest.aggregation.conftest import TOKEN
from tests.ingest.aggregation.kit import VERIFY_KEY, Fleet, small_policy


def _env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, url: str, policy_file: Path) -> None:
    monkeypatch.setenv("QUIETWIRE_LEADER_STATE_DIR", str(tmp_path / "leader"))
    monkeypatch.setenv("QUIETWIRE_LEADER_WAREHOUSE_PATH", str(tmp_path / "cli.duckdb"))
    monkeypatch.setenv("QUIETWIRE_LEADER_POLICY_PATHS", f'["{policy_file}"]')
    monkeypatch.setenv("QUIETWIRE_LEADER_HELPER_URL", url)
    monkeypatch.setenv("QUIETWIRE_LEADER_HELPER_TOKEN", TOKEN)
    monkeypatch.setenv("QUIETWIRE_LEADER_VERIFY_KEY", VERIFY_KEY.hex())


def test_aggregate_once_collects_with_real_noise(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    helper_key: PrivateKey,
    helper_settings: HelperSettings,
) -> None:
    policy = small_policy(helper_key)
    sink = DuckDBSink(tmp_path / "cli.duckdb")
    fleet = Fleet(policy, helper_key, sink)
    for _ in range(4):
        fleet.send({"inference.requests/cells": [1, 1, 1]})
    sink.close()
    policy_file = dump_policy(policy, tmp_path / "policy.yaml")
    with serve_helper(helper_settings, policies=[policy]) as url:
        _env(monkeypatch, tmp_path, url, policy_file)
        assert main(["aggregate", "--once", "--final"]) == 0
    check = DuckDBSink(tmp_path / "cli.duckdb")
    try:
        rows = check.connection.execute(
            "SELECT count(*), min(reports), min(scale), min(draws) FROM fleet_aggregates"
        ).fetchone()
    finally:
        check.close()
    assert rows is not None
    assert rows[0:2] == (3, 4)
    assert rows[2] == pytest.approx(2 * 15 / 1.0, rel=1e-3)  # 2 x bound / epsilon
    assert rows[3] == 2


def test_a_helper_with_another_key_than_the_policys_is_refused(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    helper_settings: HelperSettings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Every share would fail to open and be refused: a configuration error, not a run."""
    policy = small_policy(PrivateKey.generate())  # devices seal to a key the helper lacks
    policy_file = dump_policy(policy, tmp_path / "policy.yaml")
    DuckDBSink(tmp_path / "cli.duckdb").close()  # the sink's warehouse, which aggregate needs
    with serve_helper(helper_settings, policies=[policy]) as url:
        _env(monkeypatch, tmp_path, url, policy_file)
        assert main(["aggregate", "--once"]) == 2
    assert "tells devices to seal to" in capsys.readouterr().err


def test_aggregate_alone_needs_the_warehouse_the_sink_wrote(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    helper_key: PrivateKey,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A mistyped path is not a new empty warehouse and a run that found nothing."""
    policy_file = dump_policy(small_policy(helper_key), tmp_path / "policy.yaml")
    _env(monkeypatch, tmp_path, "http://127.0.0.1:9", policy_file)
    missing = tmp_path / "typo" / "cli.duckdb"
    monkeypatch.setenv("QUIETWIRE_LEADER_WAREHOUSE_PATH", str(missing))
    assert main(["aggregate", "--once"]) == 2
    err = capsys.readouterr().err
    assert f"QUIETWIRE_LEADER_WAREHOUSE_PATH: no warehouse at {missing}" in err
    assert not missing.parent.exists()
