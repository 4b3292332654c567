"""`python -m ingest`: bad settings and arguments are one line naming the setting or the
option, with exit code 2, before anything starts (or is created)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

import ingest._cli
import ingest.aggregation._cli
from ingest._cli import main


def _err(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


@pytest.fixture(autouse=True)
def _state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUIETWIRE_INGEST_STATE_DIR", str(tmp_path / "state"))


@pytest.mark.parametrize(
    ("variable", "value", "line"),
    [
        (
            "QUIETWIRE_INGEST_ENVIRONMENT",
            "staging",
            "ingest: QUIETWIRE_INGEST_ENVIRONMENT: Input should be 'development' or "
            "'production' (got 'staging')\n",
        ),
        (
            "QUIETWIRE_INGEST_PORT",
            "abc",
            "ingest: QUIETWIRE_INGEST_PORT: Input should be a valid integer, unable to parse "
            "string as an integer (got 'abc')\n",
        ),
    ],
)
def test_a_setting_pydantic_refuses_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    variable: str,
    value: str,
    line: str,
) -> None:
    monkeypatch.setenv(variable, value)
    assert main(["serve"]) == 2
    assert _err(capsys) == line


def test_a_model_check_reads_without_pydantics_prefix_or_link(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("QUIETWIRE_INGEST_ENVIRONMENT", "production")
    assert main(["serve"]) == 2
    err = _err(capsys)
    assert err.startswith("ingest: QUIETWIRE_INGEST_* settings: production refuses")
    assert "Value error" not in err
    assert "errors.pydantic.dev" not in err


def test_a_secret_setting_is_never_echoed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("QUIETWIRE_LEADER_VERIFY_KEY", "secret-but-malformed")
    assert main(["aggregate", "--once"]) == 2
    err = _err(capsys)
    assert err.startswith("ingest: QUIETWIRE_LEADER_VERIFY_KEY: ")
    assert "secret-but-malformed" not in err


def test_a_state_dir_that_is_a_file_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("QUIETWIRE_INGEST_STATE_DIR", str(blocker))
    assert main(["serve"]) == 2
    assert (
        _err(capsys)
        == f"ingest: QUIETWIRE_INGEST_STATE_DIR: {blocker} is a file, not a directory\n"
    )
    monkeypatch.setenv("QUIETWIRE_HELPER_STATE_DIR", str(blocker / "helper"))
    assert main(["helper"]) == 2
    assert f"{blocker} is a file, so {blocker / 'helper'} cannot be a directory" in _err(capsys)


def test_keygen_into_a_directory_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keygen", str(tmp_path)]) == 2
    assert (
        _err(capsys)
        == f"ingest: {tmp_path} is a directory; give the path of the key file to create\n"
    )


def test_the_helpers_key_is_named_as_the_helpers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "helper.key"
    key.write_text("x" * 44 + "\n")
    key.chmod(0o644)
    monkeypatch.setenv("QUIETWIRE_HELPER_PRIVATE_KEY_PATH", str(key))
    assert main(["helper"]) == 2
    err = _err(capsys)
    assert "the helper key is accessible to group/others" in err
    assert "ingest key" not in err


def test_sink_checks_its_regions_as_the_setting_does(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("QUIETWIRE_INGEST_KAFKA_BOOTSTRAP", "127.0.0.1:1")
    with pytest.raises(SystemExit) as exit_info:
        main(["sink", "--region", "eu", "--region", "bad/region"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --region: 'bad/region' is not a region name" in err


def test_sink_names_the_health_host_it_cannot_serve_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("QUIETWIRE_INGEST_KAFKA_BOOTSTRAP", "127.0.0.1:1")
    assert main(["sink", "--health-host", "256.1.1.1", "--health-port", "0"]) == 2
    err = _err(capsys)
    assert err.startswith("ingest: --health-host 256.1.1.1 --health-port 0: cannot serve")


def test_an_sqlite_file_as_warehouse_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "audit.sqlite3"
    sqlite3.connect(log).execute("CREATE TABLE audit (seq INTEGER)").connection.close()
    for command, variable in (
        (["serve", "--port", "1"], "QUIETWIRE_INGEST_WAREHOUSE_PATH"),  # embedded sink
        (["aggregate", "--once"], "QUIETWIRE_LEADER_WAREHOUSE_PATH"),
        (["sink"], "QUIETWIRE_INGEST_WAREHOUSE_PATH"),
    ):
        if command == ["sink"]:
            monkeypatch.setenv("QUIETWIRE_INGEST_KAFKA_BOOTSTRAP", "127.0.0.1:1")
        monkeypatch.setenv(variable, str(log))
        assert main(command) == 2
        assert _err(capsys) == (
            f"ingest: {variable}: cannot open the warehouse {log}: not a DuckDB file "
            "(it is an SQLite database)\n"
        )


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """What `serve` and `helper` would hand uvicorn (nothing is served)."""
    monkeypatch.setenv("QUIETWIRE_HELPER_STATE_DIR", str(tmp_path / "helper"))
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr("uvicorn.run", lambda app, **kwargs: calls.append(kwargs))
    monkeypatch.setattr(ingest._cli, "create_app", lambda settings: object())
    monkeypatch.setattr(ingest._cli, "tune_garbage_collector", lambda: None)
    monkeypatch.setattr(ingest.aggregation._cli, "create_helper_app", lambda settings: object())
    return calls


@pytest.mark.parametrize("command", ["serve", "helper"])
@pytest.mark.parametrize(
    ("args", "port"), [([], 9123), (["--port", "0"], 0), (["--port", "81"], 81)]
)
def test_port_0_is_a_free_port_as_for_the_helper(
    monkeypatch: pytest.MonkeyPatch,
    served: list[dict[str, Any]],
    command: str,
    args: list[str],
    port: int,
) -> None:
    # 0 is not "unset": uvicorn binds it, and the system picks a free port.
    monkeypatch.setenv("QUIETWIRE_INGEST_PORT", "9123")
    monkeypatch.setenv("QUIETWIRE_HELPER_PORT", "9123")
    assert main([command, *args]) == 0
    assert served == [{"host": "127.0.0.1", "port": port, "log_level": "info"}]


def test_no_command_serves_on_the_settings_port(
    monkeypatch: pytest.MonkeyPatch, served: list[dict[str, Any]]
) -> None:
    monkeypatch.setenv("QUIETWIRE_INGEST_PORT", "0")
    assert main([]) == 0
    assert served == [{"host": "127.0.0.1", "port": 0, "log_level": "info"}]


def test_the_help_says_what_port_0_means(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("serve", "helper"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        out = " ".join(capsys.readouterr().out.split())
        assert "TCP port, 0-65535; 0: a free port the system picks (default: settings)" in out
