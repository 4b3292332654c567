"""Every `quietwire` subcommand documents itself: `--help` works and names its options."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from quietwire.cli import app


def _help(*command: str) -> str:
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.stderr
    return result.stdout


def test_the_top_level_help_lists_every_command() -> None:
    out = _help()
    for command in ("report", "demo", "retention", "audit"):
        assert command in out


@pytest.mark.parametrize(
    ("command", "options"),
    [
        (("report",), ("--db", "--format", "--html", "--signal", "--level")),
        (("retention",), ("--db", "--policy", "--now", "--dry-run", "the sink never deletes")),
        (("audit", "verify"), ("--log", "--head", "Exit 1 if broken")),
        (
            ("audit", "list"),
            ("--log", "--device", "--action", "--decision", "--reason", "--format"),
        ),
    ],
)
def test_each_subcommand_names_its_options(command: tuple[str, ...], options: tuple[str]) -> None:
    out = _help(*command)
    for option in options:
        assert option in out
