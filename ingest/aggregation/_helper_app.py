"""The helper service: a FastAPI app for the second aggregator (`python -m ingest helper`).

    GET  /healthz                   liveness
    GET  /v1/helper-key             the X25519 key devices seal helper shares to
    POST /v1/aggregation-jobs       AggregationJobRequest -> AggregationJobResponse
    POST /v1/collections            CollectionRequest -> CollectionResponse
    GET  /v1/helper-stats           decisions so far, by reason

In DAP the leader authenticates to the helper: every endpoint but the first two needs
``Authorization: Bearer <leader_token>``. Errors are ``{"error": reason, "detail": ...}``
with a 4xx; a client's mistake is never a 5xx.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from http import HTTPStatus
from typing import Annotated, Any, TypeVar, cast

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from nacl.public import PrivateKey
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from auditlog import AuditLog
from ingest._errors import (
    BodyTooLarge,
    ConfigurationError,
    IngestError,
    MalformedBody,
    RequestRejected,
)
from ingest._keys import read_private_key, write_private_key
from ingest._no_telemetry import NO_REQUEST_TELEMETRY
from ingest.aggregation._catalog import TaskCatalog
from ingest.aggregation._helper import HelperAggregator
from ingest.aggregation._helper_store import HelperStore
from ingest.aggregation._noise import DiscreteLaplaceNoise, NoiseSource
from ingest.aggregation._settings import HelperSettings
from ingest.aggregation._wire import (
    AggregationJobRequest,
    AggregationJobResponse,
    CollectionRequest,
    CollectionResponse,
    HelperKeyInfo,
)
from policies import Policy

__all__ = ["create_helper_app", "load_helper_key"]

log = logging.getLogger("quietwire.helper")

_M = TypeVar("_M", bound=BaseModel)


class Unauthorized(RequestRejected):
    """No or a wrong bearer token."""

    status_code = 401
    reason = "unauthorized"


def load_helper_key(settings: HelperSettings) -> PrivateKey:
    """The configured key; in development only, generate one into the state dir if absent."""
    path = settings.key_path
    if settings.private_key_path is None and not path.exists():
        if settings.environment != "development":  # pragma: no cover - settings refuse it
            raise ConfigurationError("refusing to generate a helper key outside development")
        return write_private_key(path)
    return read_private_key(path, "helper key")


@dataclass(frozen=True, slots=True)
class _HelperState:
    aggregator: HelperAggregator
    public_key_b64: str
    token: str | None
    max_body_bytes: int


async def _state(request: Request) -> _HelperState:
    # async: FastAPI runs a sync dependency in its thread pool (a thread hop per request).
    return cast(_HelperState, request.state.helper)


_StateDep = Annotated[_HelperState, Depends(_state)]


async def _authorize(request: Request, state: _StateDep) -> None:
    if state.token is None:
        return  # development without a token (the settings refuse it in production)
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), state.token.encode()):
        raise Unauthorized("a valid leader bearer token is required")


_Authorized = Depends(_authorize)


async def _body(request: Request, state: _HelperState, model: type[_M]) -> _M:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > state.max_body_bytes:
        raise BodyTooLarge(f"body over {state.max_body_bytes} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > state.max_body_bytes:
            raise BodyTooLarge(f"body over {state.max_body_bytes} bytes")
        chunks.append(chunk)
    try:
        return model.model_validate_json(b"".join(chunks))
    except ValidationError as exc:
        errors = exc.errors(include_input=False)
        if any(e["type"] == "json_invalid" for e in errors):
            raise MalformedBody("the body is not JSON") from None
        # Locations and messages only: never echo the input back.
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors[:20])
        raise MalformedBody(detail, status_code=422) from None


router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness."""
    return {"status": "ok", "role": "helper"}


@router.get("/v1/helper-key")
async def helper_key(state: _StateDep) -> HelperKeyInfo:
    """The key devices seal their helper shares to."""
    return HelperKeyInfo(public_key=state.public_key_b64)


@router.post("/v1/aggregation-jobs", dependencies=[_Authorized])
async def aggregation_job(request: Request, state: _StateDep) -> AggregationJobResponse:
    """Verify and sum a job's reports (idempotent per job id)."""
    job = await _body(request, state, AggregationJobRequest)
    return await asyncio.to_thread(state.aggregator.aggregate, job)


@router.post("/v1/collections", dependencies=[_Authorized])
async def collection(request: Request, state: _StateDep) -> CollectionResponse:
    """The batch's noisy aggregate share (the same one every time it is asked)."""
    body = await _body(request, state, CollectionRequest)
    return await asyncio.to_thread(state.aggregator.collect, body)


@router.get("/v1/helper-stats", dependencies=[_Authorized])
async def helper_stats(state: _StateDep) -> dict[str, int]:
    """Decisions of this process so far, by decision and reason."""
    return state.aggregator.stats()


def _error(status: int, reason: str, detail: Any) -> JSONResponse:
    return JSONResponse({"error": reason, "detail": detail}, status_code=status)


async def _ingest_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, IngestError)
    return _error(exc.status_code, exc.reason, exc.detail)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()]
    return _error(422, MalformedBody.reason, errors)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    reason = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_").replace("-", "_")
    return _error(exc.status_code, reason, exc.detail)


def create_helper_app(
    settings: HelperSettings | None = None,
    *,
    policies: Sequence[Policy] | None = None,
    noise: NoiseSource | None = None,
) -> FastAPI:
    """Build the helper app.

    The key (generated in development), the policies (`settings.policy_paths`, or
    `policies` given in-process, e.g. by the demo) and the state files
    (`state_dir/helper.sqlite3`, `state_dir/audit.sqlite3`) are opened now, so a
    misconfiguration fails here with a `ConfigurationError`. `noise` defaults to
    OpenDP's discrete Laplace; only tests pass another source.
    """
    settings = settings or HelperSettings()
    private_key = load_helper_key(settings)
    catalog = (
        TaskCatalog.from_policies(policies)
        if policies is not None
        else TaskCatalog.from_files(settings.policy_paths)
    )
    if settings.leader_token is None:
        log.warning("the helper accepts unauthenticated requests (development, no leader token)")
    store = HelperStore(settings.state_dir / "helper.sqlite3")
    audit = AuditLog(settings.state_dir / "audit.sqlite3")
    aggregator = HelperAggregator(
        private_key,
        catalog,
        settings.resolved_verify_key,
        store,
        audit,
        noise if noise is not None else DiscreteLaplaceNoise(),
        max_job_reports=settings.max_job_reports,
    )
    state = _HelperState(
        aggregator,
        base64.b64encode(bytes(private_key.public_key)).decode("ascii"),
        settings.leader_token.get_secret_value() if settings.leader_token else None,
        settings.max_body_bytes,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        try:
            yield {"helper": state}
        finally:
            store.close()
            audit.close()

    app = FastAPI(
        title="Quietwire helper",
        version="1",
        lifespan=lifespan,
        telemetry=NO_REQUEST_TELEMETRY,
        exception_handlers={
            IngestError: _ingest_error,
            RequestValidationError: _validation_error,
            StarletteHTTPException: _http_error,
        },
    )
    app.include_router(router)
    return app
