"""Entry points behind `python -m ingest helper`, `aggregate` and `sink --aggregate`.

The leader's job needs the warehouse's writer lock: DuckDB lets one process write a
file, so it runs inside the process that owns the warehouse (the Kafka sink, with
`sink --aggregate`) or alone (`aggregate`, e.g. while the sink is stopped, or for a
batch of files). Before its first run it checks that the helper's key is the one the
policies tell devices to seal to: with another key every share would fail to open and
be refused, so that is a configuration error, not a run.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import signal
from dataclasses import dataclass
from datetime import UTC, datetime

import duckdb

from auditlog import AuditLog
from ingest._errors import ConfigurationError
from ingest._sink import DuckDBSink
from ingest._warehouse_path import check_warehouse_path
from ingest.aggregation._catalog import TaskCatalog
from ingest.aggregation._errors import AggregationRefused, HelperUnavailable
from ingest.aggregation._helper_app import create_helper_app
from ingest.aggregation._helper_client import HelperClient
from ingest.aggregation._service import AggregationService
from ingest.aggregation._settings import HelperSettings, LeaderSettings

__all__ = ["LeaderRuntime", "aggregation_service", "run_aggregation", "run_helper"]

log = logging.getLogger("quietwire.ingest.aggregation")


@dataclass
class LeaderRuntime:
    """A configured `AggregationService` and what it holds open."""

    service: AggregationService
    interval: float
    helper: HelperClient
    audit: AuditLog

    def close(self) -> None:
        """Close the helper client and the audit log."""
        self.helper.close()
        self.audit.close()


def _helper_url(settings: LeaderSettings, catalog: TaskCatalog) -> str:
    if settings.helper_url is not None:
        return settings.helper_url
    urls = {p.aggregation.helper.url for p in catalog.policies.values() if p.aggregation.helper}
    if len(urls) != 1:
        raise ConfigurationError(
            "set QUIETWIRE_LEADER_HELPER_URL: the policies name "
            + (f"several helpers {sorted(urls)}" if urls else "no helper")
        )
    return urls.pop()


def _check_helper_key(helper: HelperClient, catalog: TaskCatalog) -> None:
    try:
        key = base64.b64encode(helper.public_key()).decode("ascii")
    except (HelperUnavailable, AggregationRefused) as exc:
        log.warning("cannot read the helper's key yet (%s); not checked", exc)
        return
    for policy in catalog.policies.values():
        declared = policy.aggregation.helper
        if declared is not None and declared.public_key != key:
            raise ConfigurationError(
                f"the helper at {helper.base_url} has key {key}, but policy "
                f"{policy.content_hash[:12]} tells devices to seal to {declared.public_key}"
            )


def aggregation_service(settings: LeaderSettings, sink: DuckDBSink) -> LeaderRuntime:
    """The leader's service over `sink`, configured from `settings`."""
    catalog = TaskCatalog.from_files(settings.policy_paths)
    token = settings.helper_token.get_secret_value() if settings.helper_token else None
    helper = HelperClient(
        _helper_url(settings, catalog), token=token, timeout=settings.helper_timeout
    )
    try:
        _check_helper_key(helper, catalog)
    except ConfigurationError:
        helper.close()
        raise
    audit = AuditLog(settings.audit_path)
    service = AggregationService(
        sink,
        helper,
        catalog,
        settings.resolved_verify_key,
        audit=audit,
        max_job_reports=settings.max_job_reports,
        grace=settings.grace,
    )
    return LeaderRuntime(service, settings.interval_seconds, helper, audit)


def _open_warehouse(settings: LeaderSettings) -> DuckDBSink:
    path = settings.resolved_warehouse_path
    # Run alone, the job works on what the sink wrote: a mistyped path must not become
    # a new empty warehouse and a run that found nothing to do.
    check_warehouse_path(path, "QUIETWIRE_LEADER_WAREHOUSE_PATH", must_exist=True)
    try:
        return DuckDBSink(path)
    except duckdb.IOException as exc:
        raise ConfigurationError(
            f"{path}: cannot open the warehouse ({exc}); if the sink holds it, run "
            "`python -m ingest sink --aggregate` instead"
        ) from exc


def run_aggregation(*, once: bool = False, final: bool = False) -> int:
    """`python -m ingest aggregate`: run until SIGINT/SIGTERM (or once); exit status."""
    settings = LeaderSettings()
    sink = _open_warehouse(settings)
    try:
        runtime = aggregation_service(settings, sink)
        try:
            if once:
                stats = runtime.service.run_once(datetime.now(UTC), final=final)
                log.info("aggregation run: %s", stats)
                return 1 if stats.helper_unavailable else 0
            asyncio.run(_until_signalled(runtime))
            return 0
        finally:
            runtime.close()
    finally:
        sink.close()


async def _until_signalled(runtime: LeaderRuntime) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    await runtime.service.run_forever(stopping, interval=runtime.interval)


def run_helper(host: str | None, port: int | None) -> None:
    """`python -m ingest helper`: serve the helper app with uvicorn."""
    import uvicorn  # only the services need it

    settings = HelperSettings()
    uvicorn.run(
        create_helper_app(settings),
        host=host or settings.host,
        port=port if port is not None else settings.port,
        log_level="info",
    )
