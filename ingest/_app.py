"""The FastAPI application factory: lifespan, state, error handlers."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ingest._bus import EnvelopeBus, InProcessEnvelopeBus, KafkaEnvelopeBus
from ingest._errors import IngestError, MalformedBody
from ingest._intake import EnvelopeIntake
from ingest._keys import load_ingest_key
from ingest._routes import IngestState, router
from ingest._settings import IngestSettings
from ingest._sink import DuckDBSink
from ingest._verify import EnvelopeVerifier, RecentlyAccepted

__all__ = ["create_app", "default_bus"]

_RETRY_AFTER_SECONDS = "5"


def default_bus(settings: IngestSettings) -> EnvelopeBus:
    """Kafka when a bootstrap is configured, else the embedded in-process sink."""
    if settings.kafka_bootstrap is not None:
        return KafkaEnvelopeBus(
            settings.kafka_bootstrap,
            topic_prefix=settings.topic_prefix,
            ack_timeout=settings.kafka_ack_timeout,
        )
    path = settings.resolved_warehouse_path
    path.parent.mkdir(parents=True, exist_ok=True)
    return InProcessEnvelopeBus(DuckDBSink(path, group=settings.sink_group))


def _error(
    status: int, reason: str, detail: Any, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": reason, "detail": detail}, status_code=status, headers=headers)


async def _ingest_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, IngestError)
    headers = {"Retry-After": _RETRY_AFTER_SECONDS} if exc.status_code == 503 else None
    return _error(exc.status_code, exc.reason, exc.detail, headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()]
    return _error(422, MalformedBody.reason, errors)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    reason = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_").replace("-", "_")
    return _error(exc.status_code, reason, exc.detail, exc.headers)


def create_app(
    settings: IngestSettings | None = None, *, bus: EnvelopeBus | None = None
) -> FastAPI:
    """Build the ingest app for one region.

    The key is loaded (or, in development, generated) now, so a misconfiguration fails
    here with a `ConfigurationError`. The bus (default: `default_bus(settings)`) is
    opened by the lifespan and closed after the last request.
    """
    settings = settings or IngestSettings()
    private_key = load_ingest_key(settings)
    verifier = EnvelopeVerifier(
        private_key,
        region=settings.region,
        known_policy_hashes=settings.known_policy_hashes,
        max_sealed_bytes=settings.max_sealed_bytes,
    )
    public_key_b64 = base64.b64encode(bytes(private_key.public_key)).decode("ascii")
    recent = RecentlyAccepted(settings.duplicate_cache_size)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        the_bus = bus if bus is not None else default_bus(settings)
        await the_bus.start()
        try:
            intake = EnvelopeIntake(verifier, the_bus, recent)
            yield {"ingest": IngestState(settings, intake, public_key_b64)}
        finally:
            await the_bus.stop()

    app = FastAPI(
        title="Quietwire ingest",
        version="1",
        lifespan=lifespan,
        exception_handlers={
            IngestError: _ingest_error,
            RequestValidationError: _validation_error,
            StarletteHTTPException: _http_error,
        },
    )
    app.include_router(router)
    return app
