"""`quietwire ledger-reset`: the operator's acknowledgement of a device's lost or
damaged privacy ledger (docs/privacy.md, "It fails closed"), run on the device's state
directory with its app stopped."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from analytics.cli import app, fail
from client import ClientError, reset_device_ledger
from policies import DEFAULT_POLICY_PATH, PolicyError, load_policy

__all__ = ["ledger_reset"]


@app.command("ledger-reset")
def ledger_reset(
    state_dir: Annotated[
        Path, typer.Option("--state-dir", help="The device's state directory (its app stopped).")
    ],
    reason: Annotated[
        str, typer.Option(help="Why the loss is acknowledged; recorded in the ledger.")
    ],
    policy: Annotated[
        Path,
        typer.Option(
            help="The policy the device runs under.",
            show_default="the packaged policies/default.yaml",
        ),
    ] = DEFAULT_POLICY_PATH,
    force: Annotated[
        bool, typer.Option(help="Reset a sound ledger too (spends today's budget).")
    ] = False,
) -> None:
    """Acknowledge a device's lost or damaged privacy ledger: releases resume a day
    later (the current day and the last 24 real hours count as fully spent)."""
    try:
        loaded = load_policy(policy)
    except (PolicyError, ValueError) as exc:
        raise fail(str(exc)) from None
    try:
        problem = reset_device_ledger(state_dir, loaded, reason, force=force)
    except (ClientError, ValueError, OSError) as exc:
        raise fail(str(exc)) from None
    said = str(problem) if problem is not None else "a sound ledger (forced)"
    typer.echo(f"reset the privacy ledger of {state_dir}; it was: {said}")
