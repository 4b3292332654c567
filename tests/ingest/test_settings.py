"""Settings and the ingest key: development conveniences, production refusals."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from pydantic import ValidationError

from ingest import ConfigurationError, IngestSettings, create_app, load_ingest_key
from policies import load_policy


def test_defaults_accept_the_default_policy_and_name_the_region_topic() -> None:
    settings = IngestSettings(region="eu-west")
    assert settings.known_policy_hashes == {load_policy().content_hash}
    assert settings.topic == "quietwire.envelopes.eu-west"


def test_settings_come_from_prefixed_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUIETWIRE_INGEST_REGION", "ap-south")
    monkeypatch.setenv("QUIETWIRE_INGEST_KNOWN_POLICY_HASHES", f'["{"a" * 64}"]')
    settings = IngestSettings()
    assert settings.region == "ap-south"
    assert settings.known_policy_hashes == {"a" * 64}


def test_development_generates_a_private_key_file_once(tmp_path: Path) -> None:
    settings = IngestSettings(state_dir=tmp_path / "state")
    first = load_ingest_key(settings)
    assert stat.S_IMODE(settings.key_path.stat().st_mode) == 0o600
    assert bytes(load_ingest_key(settings)) == bytes(first)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"kafka_bootstrap": "127.0.0.1:9092"}, {"private_key_path": "/etc/qw/ingest.key"}],
)
def test_production_refuses_development_defaults(kwargs: dict[str, str]) -> None:
    with pytest.raises(ValidationError, match="production refuses"):
        IngestSettings(environment="production", **kwargs)  # type: ignore[arg-type]


def test_production_refuses_a_missing_key_file_instead_of_generating(tmp_path: Path) -> None:
    settings = IngestSettings(
        environment="production",
        private_key_path=tmp_path / "absent.key",
        kafka_bootstrap="127.0.0.1:9092",
    )
    with pytest.raises(ConfigurationError, match="cannot read"):
        create_app(settings)
    assert not (tmp_path / "absent.key").exists()


def test_a_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    settings = IngestSettings(state_dir=tmp_path)
    load_ingest_key(settings)
    os.chmod(settings.key_path, 0o644)
    with pytest.raises(ConfigurationError, match="chmod 600"):
        load_ingest_key(settings)


def test_a_key_file_of_the_wrong_size_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "short.key"
    path.write_text("c2hvcnQ=\n")
    path.chmod(0o600)
    with pytest.raises(ConfigurationError, match="32 bytes"):
        load_ingest_key(IngestSettings(private_key_path=path))


def test_batch_limit_cannot_exceed_the_wire_maximum() -> None:
    with pytest.raises(ValidationError):
        IngestSettings(max_batch=10_000)


@pytest.mark.parametrize("size", [0, 16 * 1024 - 1, 16 * 1024 * 1024 + 1])
def test_a_kafka_batch_limit_outside_its_range_is_refused(size: int) -> None:
    with pytest.raises(ValidationError, match="kafka_max_batch_bytes"):
        IngestSettings(kafka_max_batch_bytes=size)


@pytest.mark.parametrize("bootstrap", [":::", "kafka", "kafka:", ":9092", "h:99999", "a:1,b"])
def test_a_malformed_kafka_bootstrap_is_refused_up_front(bootstrap: str) -> None:
    with pytest.raises(ValidationError, match="not host:port"):
        IngestSettings(kafka_bootstrap=bootstrap)


def test_the_cli_answers_bad_arguments_with_a_message_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from ingest._cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--port", "99999"])
    assert exit_info.value.code == 2
    assert "is not a TCP port" in capsys.readouterr().err

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("QUIETWIRE_INGEST_STATE_DIR", str(blocker / "state"))
    assert main(["serve"]) == 2
    assert "ingest: " in capsys.readouterr().err

    monkeypatch.setenv("QUIETWIRE_INGEST_KAFKA_BOOTSTRAP", ":::")
    assert main(["sink"]) == 2
    assert "not host:port" in capsys.readouterr().err


def test_a_list_setting_that_is_not_json_is_a_message(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from ingest._cli import main

    monkeypatch.setenv("QUIETWIRE_INGEST_POLICY_PATHS", "policies/default.yaml")
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert "policy_paths" in err
    assert "takes JSON" in err


def test_serve_refuses_a_warehouse_path_it_cannot_use_before_starting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A text file, a directory, or another application's DuckDB file (which the sink
    would fill with the warehouse's tables) is refused with a message, no traceback."""
    import duckdb

    from ingest._cli import main

    monkeypatch.setenv("QUIETWIRE_INGEST_STATE_DIR", str(tmp_path / "state"))
    text = tmp_path / "text.duckdb"
    text.write_text("not a database")
    foreign = tmp_path / "foreign.duckdb"
    with duckdb.connect(str(foreign)) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER)")
    for path, message in (
        (text, "cannot open the warehouse"),
        (tmp_path, "cannot open the warehouse"),
        (foreign, "not a Quietwire warehouse"),
    ):
        monkeypatch.setenv("QUIETWIRE_INGEST_WAREHOUSE_PATH", str(path))
        assert main(["serve", "--port", "1"]) == 2
        assert message in capsys.readouterr().err
    with duckdb.connect(str(foreign)) as conn:
        assert [r[0] for r in conn.execute("SHOW TABLES").fetchall()] == ["invoices"]


def test_aggregate_final_without_once_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    from ingest._cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["aggregate", "--final"])
    assert exit_info.value.code == 2
    assert "--final needs --once" in capsys.readouterr().err
