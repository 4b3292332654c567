"""The FastAPI application factory: lifespan, state, error handlers."""

from __future__ import annotations

import asyncio
import base64
import logging
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from auditlog import AuditLog
from ingest._attestation_routes import AttestationState, admit_refused_body, attestation_router
from ingest._attestation_service import AttestationService
from ingest._attested_keys import AttestedKeys
from ingest._audit_routes import AuditKey, audit_router
from ingest._audit_sampling import SampledAudit
from ingest._audit_upkeep import AuditCheckpointer, AuditUpkeep
from ingest._body import MAX_REQUEST_BYTES, BodyLimits
from ingest._bus import EnvelopeBus, KafkaEnvelopeBus
from ingest._deletion import MAX_DELETION_BYTES
from ingest._device_ledger import DeviceLedger
from ingest._envelope_endpoint import RETRY_AFTER_SECONDS, EnvelopeEndpoint, error_answer
from ingest._errors import ConfigurationError, IngestError, MalformedBody, RateLimited
from ingest._health import CachedProbe, audit_log_probe, registry_probe
from ingest._intake import EnvelopeIntake
from ingest._keys import load_audit_key, load_ingest_key
from ingest._no_telemetry import NO_REQUEST_TELEMETRY
from ingest._outbox import Outbox
from ingest._outbox_bus import OutboxEnvelopeBus
from ingest._process import collect_periodically, freeze_after_start_up
from ingest._ratelimit import TokenBucketLimiter
from ingest._registry import SqliteDeviceRegistry
from ingest._report_rules import ReportRules
from ingest._retention_rules import RetentionRules
from ingest._routes import IngestState, router
from ingest._settings import IngestSettings
from ingest._sink import DuckDBSink
from ingest._verify import EnvelopeVerifier, RecentlyAccepted, bounded_detail, loc_text
from policies import Policy, PolicyError, load_attestation_policy, load_policy

__all__ = ["create_app", "default_bus"]

log = logging.getLogger("quietwire.ingest.app")


def default_bus(settings: IngestSettings) -> EnvelopeBus:
    """Kafka when a bootstrap is configured, else the embedded sink behind its outbox
    (`STATE_DIR/outbox/`)."""
    if settings.kafka_bootstrap is not None:
        return KafkaEnvelopeBus(
            settings.kafka_bootstrap,
            topic_prefix=settings.topic_prefix,
            ack_timeout=settings.kafka_ack_timeout,
            max_batch_bytes=settings.kafka_max_batch_bytes,
            topics=[settings.topic],
        )
    path = settings.resolved_warehouse_path
    path.parent.mkdir(parents=True, exist_ok=True)
    # The outbox, not DuckDB, makes an answer durable: `ingest._outbox_bus`.
    outbox = Outbox.open_in(settings.state_dir)
    try:
        sink = DuckDBSink(path, group=settings.sink_group)
    except BaseException:
        outbox.close()
        raise
    return OutboxEnvelopeBus(
        sink,
        outbox,
        drain_interval=settings.outbox_drain_seconds,
        max_backlog=settings.outbox_max_backlog,
    )


def _error(
    status: int, reason: str, detail: Any, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": reason, "detail": detail}, status_code=status, headers=headers)


async def _ingest_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, IngestError)
    status, body, headers = error_answer(exc)
    return JSONResponse(body, status_code=status, headers=headers)


async def _malformed_body(request: Request, errors: list[dict[str, Any]]) -> JSONResponse:
    """422 `malformed_body` (`errors`: `{loc, msg}`s, never the input), once the request
    took its token: a body refused before the rate limit's dependency runs still takes
    one on the endpoints anyone may call (429 past the source's burst, audited there)."""
    try:
        await admit_refused_body(request)
    except RateLimited as limited:
        return await _ingest_error(request, limited)
    return _error(422, MalformedBody.reason, errors)


_MAX_ERRORS_SHOWN = 3


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    # At most a few errors, each key of the sender's cut short (`loc_text`), so an answer
    # is never larger than the few lines that say what is wrong.
    errors = [
        {"loc": [loc_text(p) for p in e.get("loc", ())], "msg": bounded_detail(e.get("msg", ""))}
        for e in exc.errors()[:_MAX_ERRORS_SHOWN]
    ]
    return await _malformed_body(request, errors)


async def _state_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """A SQLite file of the ingest's state (the audit log, the device registry) refused a
    write or read: a full disk, an I/O error. Not the client's mistake, and not a bare
    500: 503 with `Retry-After`, as for the bus. (The envelope route converts its own.)"""
    log.error("state unavailable on %s: %s", request.url.path, exc)
    return _error(
        503,
        "state_unavailable",
        bounded_detail(f"the ingest could not record this request: {exc}"),
        {"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


_FASTAPI_PARSE_ERROR = "There was an error parsing the body"


def _undecodable_body(exc: StarletteHTTPException) -> str | None:
    """What kept FastAPI from decoding a JSON body, if `exc` is its refusal of one; else
    None. FastAPI hands a `JSONDecodeError` to `_validation_error`, but answers any other
    error of `json.loads` as a bare 400 "There was an error parsing the body", with that
    error as the exception's cause: bytes that are not UTF-8 (nor UTF-16/32), an integer
    longer than Python converts (`sys.get_int_max_str_digits`), or nesting deeper than
    the parser recurses. The detail names the kind of problem, never the body."""
    if exc.status_code != 400:
        return None
    cause = exc.__cause__
    if isinstance(cause, UnicodeDecodeError):
        return "body is not UTF-8 JSON"
    if isinstance(cause, RecursionError):
        return "body nests too deep to parse"
    if isinstance(cause, ValueError) and "integer string conversion" in str(cause):
        return f"body has a number too long to parse (over {sys.get_int_max_str_digits()} digits)"
    if exc.detail == _FASTAPI_PARSE_ERROR:
        return "body could not be parsed as JSON"
    return None


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if (problem := _undecodable_body(exc)) is not None:
        # A malformed body like any other: the same answer, token and audit as one
        # that is not JSON at all (`_validation_error`).
        return await _malformed_body(request, [{"loc": ["body"], "msg": problem}])
    reason = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_").replace("-", "_")
    return _error(exc.status_code, reason, exc.detail, exc.headers)


def _load_policies(settings: IngestSettings) -> list[Policy]:
    out = []
    for path in settings.policy_paths:
        try:
            out.append(load_policy(path))
        except PolicyError as exc:
            raise ConfigurationError(f"policy: {exc}") from exc
    return out


def create_app(
    settings: IngestSettings | None = None,
    *,
    bus: EnvelopeBus | None = None,
    attestation_clock: Callable[[], float] | None = None,
    clock: Callable[[], datetime] | None = None,
) -> FastAPI:
    """Build the ingest app for one region.

    The key and the attestation policy are loaded (the key, in development, generated)
    now, so a misconfiguration fails here with a `ConfigurationError`. The bus
    (default: `default_bus(settings)`) is opened by the lifespan and closed after the
    last request. The device registry and the audit log are SQLite files in
    `state_dir` (`devices.sqlite3`, `audit.sqlite3`). `attestation_clock` (Unix
    seconds) stamps nonces, challenges and attestation expiries (tests move it).
    `clock` is the envelope intake's (receipt time: `received_at`, clock skew, the
    device ledger's budget day; default the system clock): tests and the fleet
    simulator move it. The device ledger is `state_dir/ledger.sqlite3`.
    """
    settings = settings or IngestSettings()
    private_key = load_ingest_key(settings)
    try:
        attestation_policy = load_attestation_policy(settings.attestation_policy_path)
    except PolicyError as exc:
        raise ConfigurationError(f"attestation policy: {exc}") from exc
    registry = SqliteDeviceRegistry(settings.state_dir / "devices.sqlite3")
    audit = AuditLog(settings.state_dir / "audit.sqlite3")
    attested_keys = AttestedKeys(registry, ttl=settings.attested_key_cache_seconds)
    sampled = SampledAudit(audit, interval=settings.audit_sample_seconds)
    service = AttestationService(
        attestation_policy,
        registry,
        audit,
        attested_keys,
        sampled=sampled,
        clock=attestation_clock or time.time,
    )
    limiter = TokenBucketLimiter(
        rate=settings.unauthenticated_rate, burst=settings.unauthenticated_burst
    )
    audit_key = load_audit_key(settings)
    checkpointer = AuditCheckpointer(
        audit,
        audit_key,
        every_entries=settings.audit_checkpoint_entries,
        every_seconds=settings.audit_checkpoint_seconds,
    )
    audit_key_info = AuditKey(
        public_key=base64.b64encode(bytes(audit_key.verify_key)).decode("ascii")
    )
    operator_token = settings.operator_token.get_secret_value() if settings.operator_token else None
    served = _load_policies(settings)
    ledger = DeviceLedger(settings.state_dir / DeviceLedger.FILE_NAME, served)
    verifier = EnvelopeVerifier(
        private_key,
        region=settings.region,
        known_policy_hashes=settings.known_policy_hashes | {p.content_hash for p in served},
        report_rules=ReportRules(served),
        retention=RetentionRules(served, slack=timedelta(seconds=settings.max_clock_skew_seconds)),
        max_sealed_bytes=settings.max_sealed_bytes,
        attested_keys=attested_keys,
        software_tiers=[t.value for t in attestation_policy.software_tiers],
        max_clock_skew=timedelta(seconds=settings.max_clock_skew_seconds),
    )
    public_key_b64 = base64.b64encode(bytes(private_key.public_key)).decode("ascii")
    recent = RecentlyAccepted(settings.duplicate_cache_size)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        the_bus = bus if bus is not None else default_bus(settings)
        await the_bus.start()
        upkeep = AuditUpkeep(sampled, checkpointer)
        await upkeep.start()
        collector: asyncio.Task[None] | None = None
        try:
            intake = EnvelopeIntake(
                verifier,
                the_bus,
                recent,
                audit,
                ledger=ledger,
                clock=clock,
                linger=settings.wave_linger_seconds,
            )
            freeze_after_start_up()  # everything is open: out of the collector's sight
            collector = asyncio.create_task(collect_periodically(), name="quietwire-gc")
            yield {
                "ingest": IngestState(
                    settings,
                    intake,
                    public_key_b64,
                    attested_keys,
                    health={
                        # The bus caches its own check (publish consults it too).
                        the_bus.dependency: CachedProbe(the_bus.check, ttl=0.0),
                        "registry": CachedProbe(registry_probe(registry)),
                        "audit_log": CachedProbe(audit_log_probe(audit)),
                    },
                    deletion_limiter=TokenBucketLimiter(
                        rate=settings.deletion_rate, burst=settings.deletion_burst
                    ),
                    sampled=sampled,
                ),
                "attestation": AttestationState(service, operator_token, limiter),
                "audit_key": audit_key_info,
            }
        finally:
            if collector is not None:
                collector.cancel()
            await the_bus.stop()
            await upkeep.close()  # after the last request's entry, before the log closes
            registry.close()
            audit.close()
            ledger.close()

    app = FastAPI(
        title="Quietwire ingest",
        version="1",
        lifespan=lifespan,
        telemetry=NO_REQUEST_TELEMETRY,
        exception_handlers={
            IngestError: _ingest_error,
            RequestValidationError: _validation_error,
            StarletteHTTPException: _http_error,
            sqlite3.Error: _state_unavailable,
        },
    )
    app.include_router(router)
    app.include_router(attestation_router)
    app.include_router(audit_router)
    # Every body is bounded while it arrives, before a route or a body parameter reads it.
    app.add_middleware(
        BodyLimits,
        limits={
            "/v1/envelopes": settings.max_body_bytes,
            "/v1/deletion-requests": MAX_DELETION_BYTES,
        },
        default=MAX_REQUEST_BYTES,
    )
    # Outermost: the envelope route's fast path (the same steps, without the framework).
    app.add_middleware(EnvelopeEndpoint, limit=settings.max_body_bytes)
    return app
