"""`python -m ingest`: run the service, the Kafka sink, or make a key.

    python -m ingest [serve] [--host H] [--port P]
    python -m ingest sink [--region R ...] [--aggregate] [--health-port P]
    python -m ingest aggregate [--once] [--final]
    python -m ingest helper [--host H] [--port P]
    python -m ingest keygen PATH
    python -m ingest audit-key        (the audit key's public half, for auditors)

Configuration comes from `QUIETWIRE_INGEST_*` variables (see `IngestSettings`), the
leader's aggregation from `QUIETWIRE_LEADER_*` (`ingest.aggregation.LeaderSettings`) and
the helper from `QUIETWIRE_HELPER_*` (`ingest.aggregation.HelperSettings`).

DuckDB lets one process write a warehouse file: the aggregation job runs where the
warehouse's writer runs (`sink --aggregate` next to Kafka), or alone (`aggregate`).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import logging
import signal
import sys
import typing
from collections.abc import Sequence
from pathlib import Path

import duckdb
from pydantic import SecretStr, ValidationError
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, SettingsError

from ingest._app import create_app
from ingest._errors import IngestError
from ingest._health_server import HealthServer
from ingest._keys import load_audit_key, write_private_key
from ingest._process import (
    collect_periodically,
    freeze_after_start_up,
    tune_garbage_collector,
)
from ingest._settings import IngestSettings, check_region
from ingest._sink import DuckDBSink
from ingest._sink_consumer import KafkaSinkConsumer
from ingest._sink_service import Companion, SinkService
from ingest._warehouse_path import check_warehouse_path
from ingest.aggregation._cli import aggregation_service, run_aggregation, run_helper
from ingest.aggregation._settings import HelperSettings, LeaderSettings

__all__ = ["main", "run_sink"]

log = logging.getLogger("quietwire.ingest")

_WAREHOUSE_SETTING = "QUIETWIRE_INGEST_WAREHOUSE_PATH"


async def run_sink(
    settings: IngestSettings,
    regions: Sequence[str],
    *,
    aggregate: bool = False,
    health_host: str = "127.0.0.1",
    health_port: int | None = None,
) -> int:
    """Drain the regions' topics into the warehouse until SIGINT/SIGTERM (returns 0) or
    a failure the sink cannot handle (logged, returns 1); see `ingest._sink_service`.
    With `aggregate`, the leader's aggregation job runs on the same warehouse too; with
    `health_port`, `GET /healthz` answers there."""
    if settings.kafka_bootstrap is None:
        raise IngestError(
            "the Kafka sink needs QUIETWIRE_INGEST_KAFKA_BOOTSTRAP; without Kafka the "
            "service writes the warehouse itself (embedded mode)"
        )
    path = settings.resolved_warehouse_path
    check_warehouse_path(path, _WAREHOUSE_SETTING)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        sink = DuckDBSink(path, group=settings.sink_group)
    except duckdb.Error as exc:
        raise IngestError(f"cannot open the warehouse {path}: {exc}") from exc
    leader = aggregation_service(LeaderSettings(), sink) if aggregate else None
    health: HealthServer | None = None
    try:
        consumer = KafkaSinkConsumer(
            sink,
            bootstrap_servers=settings.kafka_bootstrap,
            topics=[settings.topic_for(r) for r in regions],
        )
        # The collector's passes on a schedule (in a tuned process; see ingest._process).
        companions: list[Companion] = [collect_periodically]
        if leader is not None:
            service, interval = leader.service, leader.interval
            companions.append(lambda stop: service.run_forever(stop, interval=interval))
        runner = SinkService(sink, consumer, companions=companions)
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stopping.set)
        if health_port is not None:
            try:
                health = HealthServer(runner.health, loop, host=health_host, port=health_port)
            except OSError as exc:  # a host that does not resolve, a port taken
                raise IngestError(
                    f"--health-host {health_host} --health-port {health_port}: cannot serve "
                    f"/healthz there: {exc.strerror or exc}"
                ) from exc
            log.info("sink health at http://%s:%d/healthz", health_host, health.port)
        freeze_after_start_up()  # the warehouse and the consumer are open
        return await runner.run(stopping)
    finally:
        if health is not None:
            health.close()
        if leader is not None:
            leader.close()
        sink.close()


_PORT_HELP = "TCP port, 0-65535; 0: a free port the system picks (default: settings)"


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the process exit status."""
    parser = argparse.ArgumentParser(prog="python -m ingest", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="run the HTTP service (uvicorn)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=_port, help=_PORT_HELP)
    sink = sub.add_parser("sink", help="run the Kafka -> DuckDB sink consumer")
    sink.add_argument(
        "--region",
        action="append",
        type=_region,
        help="region topic(s), named as QUIETWIRE_INGEST_REGION; default: settings",
    )
    sink.add_argument(
        "--health-port",
        type=_port,
        help="serve GET /healthz on this port (kafka, warehouse, lag); default: none",
    )
    sink.add_argument("--health-host", default="127.0.0.1", help="(default: 127.0.0.1)")
    sink.add_argument(
        "--aggregate",
        action="store_true",
        help="also run the leader's aggregation job on the warehouse (QUIETWIRE_LEADER_*)",
    )
    aggregate = sub.add_parser(
        "aggregate", help="run the leader's aggregation job and collector (QUIETWIRE_LEADER_*)"
    )
    aggregate.add_argument("--once", action="store_true", help="one run, then exit")
    aggregate.add_argument(
        "--final", action="store_true", help="treat every batch as closed (with --once)"
    )
    helper = sub.add_parser("helper", help="run the helper service (QUIETWIRE_HELPER_*)")
    helper.add_argument("--host")
    helper.add_argument("--port", type=_port, help=_PORT_HELP)
    keygen = sub.add_parser("keygen", help="write a new ingest private key file (0600)")
    keygen.add_argument("path", type=Path)
    sub.add_parser(
        "audit-key",
        help="print the public audit key (base64) that signs the audit log's checkpoints "
        "(generated into the state directory if absent), for `quietwire audit verify`",
    )
    args = parser.parse_args(argv)
    if args.command == "aggregate" and args.final and not args.once:
        # --final treats every batch as closed: a last run (the README's
        # `aggregate [--once [--final]]`), never the service's loop, which it ignored.
        aggregate.error("--final needs --once (one run that treats every batch as closed)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    try:
        if args.command == "keygen":
            key = write_private_key(args.path)
            print(base64.b64encode(bytes(key.public_key)).decode("ascii"))
            return 0
        if args.command == "helper":
            run_helper(args.host, args.port)
            return 0
        if args.command == "aggregate":
            return run_aggregation(once=args.once, final=args.final)
        settings = IngestSettings()
        if args.command == "audit-key":
            audit_key = load_audit_key(settings)
            print(base64.b64encode(bytes(audit_key.verify_key)).decode("ascii"))
            return 0
        if args.command == "sink":
            regions = args.region or [settings.region]
            tune_garbage_collector()
            return asyncio.run(
                run_sink(
                    settings,
                    regions,
                    aggregate=args.aggregate,
                    health_host=args.health_host,
                    health_port=args.health_port,
                )
            )
        import uvicorn  # only the service needs it

        if settings.kafka_bootstrap is None:
            check_warehouse_path(settings.resolved_warehouse_path, _WAREHOUSE_SETTING)
        # `python -m ingest` alone is `serve` without its options. Port 0 is a free port
        # the system picks (uvicorn logs it), as for the helper and QUIETWIRE_INGEST_PORT.
        host = getattr(args, "host", None) or settings.host
        port = getattr(args, "port", None)
        app = create_app(settings)
        tune_garbage_collector()
        uvicorn.run(app, host=host, port=settings.port if port is None else port, log_level="info")
        return 0
    except IngestError as exc:
        print(f"ingest: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        print(f"ingest: {_settings_problem(exc)}", file=sys.stderr)
        return 2
    except SettingsError as exc:  # an environment value that does not parse
        print(
            f"ingest: {exc} (a list setting takes JSON, e.g. "
            "QUIETWIRE_INGEST_POLICY_PATHS='[\"policies/default.yaml\"]')",
            file=sys.stderr,
        )
        return 2
    except OSError as exc:  # e.g. a state directory that cannot be created
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"ingest: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2


_SETTINGS: dict[str, type[BaseSettings]] = {
    cls.__name__: cls for cls in (IngestSettings, LeaderSettings, HelperSettings)
}


def _settings_problem(exc: ValidationError) -> str:
    """pydantic's errors on one line, each naming its environment variable, without
    pydantic's "Value error, " prefix and documentation link."""
    settings = _SETTINGS.get(exc.title)
    return "; ".join(_one_problem(exc.title, settings, error) for error in exc.errors())


def _one_problem(title: str, settings: type[BaseSettings] | None, error: ErrorDetails) -> str:
    loc = [str(part) for part in error["loc"]]
    reason = str(error["msg"]).removeprefix("Value error, ")
    if settings is None:
        return f"{'.'.join([title, *loc])}: {reason}"
    prefix = str(settings.model_config.get("env_prefix", ""))
    if not loc:  # a check across settings: it names them itself
        return f"{prefix}* settings: {reason}"
    given = error.get("input")
    field = settings.model_fields.get(loc[0])
    shown = isinstance(given, str | int | float) and 0 < len(str(given)) <= 80
    secret = field is None or _is_secret(field.annotation)
    if shown and not secret and str(given) not in reason:
        reason += f" (got {given!r})"
    return f"{prefix}{loc[0].upper()}: {reason}"


def _is_secret(annotation: object) -> bool:
    return annotation is SecretStr or SecretStr in typing.get_args(annotation)


def _region(text: str) -> str:
    try:
        return check_region(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _port(text: str) -> int:
    # argparse turns this ValueError into "invalid _port value", so say it plainly.
    if not text.isdigit() or int(text) > 65_535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port (0-65535)")
    return int(text)
