"""The `quietwire` entry point: the analytics commands (`analytics.cli`), the demo,
which runs a simulated fleet through client, ingest and warehouse (`fleetsim`), and the
operator's `ledger-reset` of a device's damaged privacy ledger (`quietwire._ledger_cli`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

import quietwire._ledger_cli  # noqa: F401  (registers `ledger-reset`)
from analytics.cli import app, fail
from fleetsim import run_demo
from ingest import IngestError, check_bootstrap
from policies import DEFAULT_POLICY_PATH, PolicyError, load_policy

__all__ = ["app", "main"]


@app.command()
def demo(
    devices: Annotated[
        int,
        typer.Option(
            min=1,
            help="Simulated devices (aggregate batches of fewer than the policy's "
            "min_batch_size, 100 by default, are never revealed).",
        ),
    ] = 4000,
    windows: Annotated[
        int,
        typer.Option(
            min=1, help="Windows per device (window length from the policy; default one day)."
        ),
    ] = 1,
    db: Annotated[Path, typer.Option(help="Warehouse file to write.")] = Path(
        "quietwire-demo.duckdb"
    ),
    kafka: Annotated[
        str | None,
        typer.Option(
            metavar="BOOTSTRAP",
            help="Kafka bootstrap address; without it the ingest hands envelopes "
            "to the sink in-process.",
        ),
    ] = None,
    html: Annotated[Path, typer.Option(help="Where to write the HTML report.")] = Path(
        "reports/demo.html"
    ),
    seed: Annotated[
        int | None, typer.Option(help="Seed for the simulated usage (noise stays random).")
    ] = None,
    policy: Annotated[
        Path,
        typer.Option(
            help="Policy the fleet runs under. policies/pilot.yaml runs the same signals "
            "under local DP (no helper) with four times the budget, for comparison.",
            show_default="the packaged policies/default.yaml",
        ),
    ] = DEFAULT_POLICY_PATH,
) -> None:
    """Simulate a fleet through client, ingest, sink and DuckDB, then write the report."""
    try:
        load_policy(policy)
        if kafka is not None:
            check_bootstrap(kafka)
    except (PolicyError, ValueError) as exc:
        raise fail(str(exc)) from None
    try:
        run_demo(
            devices=devices,
            windows=windows,
            db=db,
            kafka=kafka,
            html=html,
            seed=seed,
            policy=policy,
        )
    except IngestError as exc:  # Kafka unreachable, say
        raise fail(exc.detail) from None
    except OSError as exc:  # the warehouse or report path cannot be written
        where = f"{exc.filename}: " if exc.filename else ""
        raise fail(f"{where}{exc.strerror or exc}") from None


def main() -> None:
    """Console entry point (`quietwire`)."""
    app()
