"""HTTP routes: envelope batches, deletion requests, the region's sealing key, health."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Annotated, Any, Literal, cast

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError

from auditlog import AuditRecord
from ingest._attestation_routes import client_source, take_token
from ingest._attested_keys import AttestedKeys
from ingest._audit_group import append_audited
from ingest._audit_sampling import SampledAudit
from ingest._batch_scan import NotABatch, count_batch_items
from ingest._deletion import verify_deletion_request
from ingest._errors import (
    BUS_UNAVAILABLE,
    AuditUnavailable,
    BusUnavailable,
    DeletionRejected,
    MalformedBody,
    TooManyItems,
)
from ingest._health import CachedProbe, DependencyHealth, check_all
from ingest._intake import EnvelopeIntake
from ingest._ratelimit import TokenBucketLimiter
from ingest._settings import IngestSettings
from ingest._verify import summarize_validation_error
from schemas import BatchResult, DeletionReceipt, EnvelopeBatch, SignedDeletionRequest

__all__ = ["HealthStatus", "IngestKeyInfo", "IngestState", "answer_batch", "router"]

SealedBoxAlg = Literal["x25519-xsalsa20-poly1305-sealedbox"]


@dataclass(frozen=True, slots=True)
class IngestState:
    """What the lifespan opens for the app's lifetime; routes read it via `StateDep`."""

    settings: IngestSettings
    intake: EnvelopeIntake
    public_key_b64: str
    attested_keys: AttestedKeys | None = None
    """Standing of TPM keys, for deletion requests signed `ecdsa-p256`."""
    health: Mapping[str, CachedProbe] = field(default_factory=dict)
    """What `/healthz` checks: dependency name -> its probe."""
    deletion_limiter: TokenBucketLimiter | None = None
    """Deletion requests per source (None: unlimited)."""
    sampled: SampledAudit | None = None
    """Where a refused deletion request's 429 is audited (sampled per source)."""


async def _state(request: Request) -> IngestState:
    # async: FastAPI runs a sync dependency in its thread pool (a thread hop per request).
    return cast(IngestState, request.state.ingest)


StateDep = Annotated[IngestState, Depends(_state)]


class IngestKeyInfo(BaseModel):
    """The key devices seal envelopes to (NaCl SealedBox, Curve25519)."""

    region: str
    public_key: str
    alg: SealedBoxAlg = "x25519-xsalsa20-poly1305-sealedbox"


class HealthStatus(BaseModel):
    """The replica and what it depends on: 200 with status ok when every dependency
    answers, else 503 with status unavailable and the failing ones named."""

    status: Literal["ok", "unavailable"] = "ok"
    region: str
    bus: str
    dependencies: dict[str, DependencyHealth] = {}
    """kafka (or warehouse, embedded), registry, audit_log: each `{ok, detail}`."""
    failing: list[str] = []


class ErrorBody(BaseModel):
    """Every error answer (except a batch's per-item 422, which is a `BatchResult`)."""

    error: str
    detail: Any = None


router = APIRouter()

_PRECISE_ERRORS_MAX_BYTES = 64 * 1024
"""A body not shaped like a batch is handed to the parser for its precise error only up
to this size: parsing `[1, 1, ...]` costs memory (and one error) per item."""

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "body is not JSON (malformed_body)"},
    413: {"model": ErrorBody, "description": "body or item count over the limit"},
    422: {"model": BatchResult, "description": "some items rejected; accepted ones are durable"},
    503: {"model": ErrorBody, "description": "bus unavailable; retry later"},
}


def _parse_batch(body: bytes, max_items: int) -> EnvelopeBatch:
    """The batch in `body`, its items counted (`TooManyItems`) before it is parsed."""
    try:
        count = count_batch_items(body, max_items)
    except NotABatch as exc:
        # Not the plain shape: a small body gets the parser's precise answer (400 not
        # JSON, 422 and where); a large one is not parsed at all, whatever it holds.
        if len(body) > _PRECISE_ERRORS_MAX_BYTES:
            raise MalformedBody(f"body is not an envelope batch: {exc}", status_code=422) from exc
        count = 0
    if count > max_items:
        raise TooManyItems(f"batch has more than {max_items} items, the limit")
    try:
        batch = EnvelopeBatch.model_validate_json(body)
    except ValidationError as exc:
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            raise MalformedBody("body is not valid JSON", status_code=400) from exc
        raise MalformedBody(
            f"body is not an envelope batch: {summarize_validation_error(exc, '<body>')}",
            status_code=422,
        ) from exc
    if len(batch.envelopes) > max_items:  # a small body the scan could not count
        raise TooManyItems(f"batch has {len(batch.envelopes)} items; the limit is {max_items}")
    return batch


async def answer_batch(body: bytes, state: IngestState) -> tuple[int, bytes]:
    """(status, JSON body) of the answer to a batch: its items counted, parsed, verified,
    admitted and published (`EnvelopeIntake.submit`). Raises `IngestError` (4xx for the
    body as a whole, 503 for the bus or ledger). Shared by the route below and its
    framework-free twin, `ingest._envelope_endpoint.EnvelopeEndpoint`."""
    batch = _parse_batch(body, state.settings.max_batch)
    result = await state.intake.submit(batch.envelopes)
    return 422 if result.rejected else 202, result.model_dump_json(exclude_none=True).encode()


@router.post(
    "/v1/envelopes",
    status_code=202,
    response_model=BatchResult,
    responses=_ERRORS,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": EnvelopeBatch.model_json_schema()}},
        }
    },
)
async def post_envelopes(request: Request, state: StateDep) -> Response:
    """Accept a batch of sealed envelopes.

    202: every item accepted and durable. 422: at least one item rejected; the body has
    every item's result, and the accepted ones are durable too (do not resend them).
    """
    # The body is read by hand (not as a typed parameter) so its items are counted
    # before it is parsed; `BodyLimits` has already bounded its size while it arrived.
    # (Installed by `create_app`, `EnvelopeEndpoint` answers before this route is reached.)
    status, payload = await answer_batch(await request.body(), state)
    return Response(payload, status_code=status, media_type="application/json")


async def _deletion_admitted(request: Request, state: IngestState) -> None:
    """Take a token from the request's source, before its body is read: any fresh
    software key may ask to delete "its" data, and each request costs the warehouse a
    scan of the device's rows, so one source's flood must not stall the sink for
    everyone. Past the source's burst: 429 `rate_limited`, audited sampled per source."""
    if state.deletion_limiter is not None and state.sampled is not None:
        await take_token(
            state.deletion_limiter,
            client_source(request),
            state.sampled,
            "deletion",
            "deletion requests",
        )


@router.post(
    "/v1/deletion-requests",
    status_code=202,
    response_model=DeletionReceipt,
    responses={
        413: {"model": ErrorBody, "description": "body over the limit"},
        422: {"model": ErrorBody, "description": "not a valid signed deletion request"},
        503: {"model": ErrorBody, "description": "bus unavailable; retry later"},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": SignedDeletionRequest.model_json_schema()}},
        }
    },
)
async def post_deletion_request(request: Request, state: StateDep) -> DeletionReceipt:
    """Record a device's request to delete its data of one tier (consent revoked).

    Signed by the device's Ed25519 key, or by its attested TPM key (`ecdsa-p256`, the
    device not revoked). 202: the request is durable on the bus (the warehouse deletes
    the device's rows of that tier when it consumes it). 422: refused, with the reason;
    not worth resending.
    """
    await _deletion_admitted(request, state)
    body = await request.body()  # at most MAX_DELETION_BYTES: `BodyLimits`
    audit = state.intake.audit
    try:
        # Off the event loop: a TPM key's standing may be read from the registry.
        verified = await asyncio.to_thread(
            verify_deletion_request,
            body,
            region=state.settings.region,
            received_at=state.intake.now(),
            max_clock_skew=timedelta(seconds=state.settings.max_clock_skew_seconds),
            attested_keys=state.attested_keys,
        )
    except DeletionRejected as exc:
        if audit is not None:
            record = AuditRecord("deletion", "rejected", exc.device_id, exc.reason, exc.detail)
            await append_audited(audit, [record])
        raise
    deletion = verified.item.deletion
    try:
        await state.intake.bus.publish([verified.item])
    except BusUnavailable:
        if audit is not None:
            record = AuditRecord(
                "deletion",
                "rejected",
                deletion.device_id,
                BUS_UNAVAILABLE,
                f"deletion {deletion.request_id}: verified, not published (the bus failed); "
                "the device retries it",
            )
            with contextlib.suppress(AuditUnavailable):  # the 503 it hears is the bus's
                await append_audited(audit, [record])
        raise
    if audit is not None:
        detail = (
            f"deletion {deletion.request_id} tier={deletion.tier.value} "
            f"assurance={verified.assurance}"
        )
        if verified.note is not None:
            detail += f" ({verified.note})"
        record = AuditRecord("deletion", "accepted", deletion.device_id, None, detail)
        await append_audited(audit, [record])
    return DeletionReceipt(request_id=deletion.request_id)


@router.get("/v1/ingest-key", response_model=IngestKeyInfo)
async def get_ingest_key(state: StateDep) -> IngestKeyInfo:
    """The region's public sealing key, base64 of the raw 32 bytes."""
    return IngestKeyInfo(region=state.settings.region, public_key=state.public_key_b64)


@router.get(
    "/healthz",
    response_model=HealthStatus,
    responses={503: {"model": HealthStatus, "description": "a dependency is down (failing)"}},
)
async def healthz(state: StateDep) -> JSONResponse:
    """Readiness: 200 when every dependency answers, 503 naming those that do not.
    Checks are cached for a second or two, so polling costs little."""
    dependencies = await check_all(state.health)
    failing = [name for name, d in dependencies.items() if not d.ok]
    body = HealthStatus(
        status="unavailable" if failing else "ok",
        region=state.settings.region,
        bus=state.intake.bus.name,
        dependencies=dependencies,
        failing=failing,
    )
    return JSONResponse(body.model_dump(mode="json"), status_code=503 if failing else 200)
