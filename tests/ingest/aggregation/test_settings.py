"""Settings: the shared verify key's formats, and production refusing development defaults."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from pydantic import ValidationError

from ingest.aggregation import (
    DEVELOPMENT_VERIFY_KEY,
    HelperSettings,
    LeaderSettings,
    parse_verify_key,
    task_verify_key,
)

KEY = bytes(range(32))


def test_the_verify_key_is_hex_or_base64_of_32_bytes() -> None:
    assert parse_verify_key(KEY.hex()) == KEY
    assert parse_verify_key(base64.b64encode(KEY).decode()) == KEY
    for bad in ("", "zz" * 32, KEY.hex()[:-2], base64.b64encode(KEY[:16]).decode()):
        with pytest.raises(ValueError, match="verify key"):
            parse_verify_key(bad)


def test_each_task_gets_its_own_verify_key() -> None:
    a = task_verify_key(KEY, "a" * 64, "s/cells")
    assert len(a) == 32
    assert a != task_verify_key(KEY, "a" * 64, "s/sums")
    assert a != task_verify_key(KEY, "b" * 64, "s/cells")
    assert a != task_verify_key(bytes(32), "a" * 64, "s/cells")


def test_development_runs_with_nothing_configured() -> None:
    assert HelperSettings().resolved_verify_key == DEVELOPMENT_VERIFY_KEY
    assert LeaderSettings().resolved_verify_key == DEVELOPMENT_VERIFY_KEY
    assert LeaderSettings().resolved_warehouse_path == Path(".quietwire/ingest/warehouse.duckdb")


def test_production_refuses_development_defaults(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="QUIETWIRE_HELPER_VERIFY_KEY"):
        HelperSettings(environment="production", private_key_path=tmp_path / "k")
    with pytest.raises(ValidationError, match="QUIETWIRE_HELPER_LEADER_TOKEN"):
        HelperSettings(
            environment="production", private_key_path=tmp_path / "k", verify_key=KEY.hex()
        )
    with pytest.raises(ValidationError, match="QUIETWIRE_LEADER_HELPER_TOKEN"):
        LeaderSettings(environment="production", verify_key=KEY.hex())
    ok = LeaderSettings(environment="production", verify_key=KEY.hex(), helper_token="t")
    assert ok.resolved_verify_key == KEY


def test_settings_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    policy = tmp_path / "p.yaml"
    monkeypatch.setenv("QUIETWIRE_HELPER_POLICY_PATHS", f'["{policy}"]')
    monkeypatch.setenv("QUIETWIRE_HELPER_VERIFY_KEY", base64.b64encode(KEY).decode())
    monkeypatch.setenv("QUIETWIRE_LEADER_HELPER_URL", "http://helper.internal:8090")
    monkeypatch.setenv("QUIETWIRE_LEADER_GRACE_SECONDS", "60")
    helper = HelperSettings()
    assert helper.policy_paths == (policy,)
    assert helper.resolved_verify_key == KEY
    leader = LeaderSettings()
    assert leader.helper_url == "http://helper.internal:8090"
    assert leader.grace.total_seconds() == 60
    monkeypatch.setenv("QUIETWIRE_HELPER_VERIFY_KEY", "short")
    with pytest.raises(ValidationError, match="verify key"):
        HelperSettings()
