"""HTTP routes of enrollment, attestation and revocation (one router).

    POST /v1/enroll              EnrollRequest      -> 200 EnrollmentChallenge
    POST /v1/enroll/activate     ActivateRequest    -> 200 EnrollmentResult
    POST /v1/attest/nonce        NonceRequest       -> 200 NonceGrant
    POST /v1/attest              AttestRequest      -> 200 AttestationResult
    POST /v1/devices/{id}/revoke RevokeRequest      -> 200 RevocationResult (operator)

Refusals are ``{"error": reason, "detail": ...}`` with a 4xx (see `AttestationReason`).
The revoke endpoint needs ``Authorization: Bearer <QUIETWIRE_INGEST_OPERATOR_TOKEN>``;
with no token configured it refuses every call.

Anyone may call these endpoints, so each request first takes a token from its source's
bucket (`TokenBucketLimiter`, keyed by the client's address as the server sees it, an
IPv6 address by its /64 unless it carries an IPv4 one (IPv4-mapped, NAT64), which is
keyed by that IPv4 address: behind a proxy, have the server trust the proxy's forwarded
address); an empty bucket
is a 429 ``rate_limited`` with ``Retry-After``, recorded through `SampledAudit` so a
flood adds a bounded number of audit entries.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import re
from dataclasses import dataclass
from functools import partial
from typing import Annotated, Any, cast

from fastapi import APIRouter, Depends, Header, Request

from auditlog import AuditRecord
from ingest._attestation_service import AttestationService
from ingest._audit_sampling import SampledAudit
from ingest._errors import RateLimited
from ingest._ratelimit import TokenBucketLimiter
from ingest.attestation import AttestationError, AttestationReason
from schemas import (
    ActivateRequest,
    AttestationResult,
    AttestRequest,
    EnrollmentChallenge,
    EnrollmentResult,
    EnrollRequest,
    NonceGrant,
    NonceRequest,
    RevocationResult,
    RevokeRequest,
)

__all__ = [
    "AttestationState",
    "admit_refused_body",
    "attestation_router",
    "client_source",
    "take_token",
]


@dataclass(frozen=True, slots=True)
class AttestationState:
    """What the attestation routes read from the lifespan state."""

    service: AttestationService
    operator_token: str | None
    limiter: TokenBucketLimiter


def _attestation_state(request: Request) -> AttestationState:
    return cast(AttestationState, request.state.attestation)


async def _state(request: Request) -> AttestationState:
    # async: FastAPI runs a sync dependency in its thread pool (a thread hop per request).
    return _attestation_state(request)


_EMBEDS_IPV4 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("::/96"))
"""Prefixes whose addresses carry an IPv4 host's address in their last 32 bits: NAT64's
well-known prefix (RFC 6052) and the deprecated IPv4-compatible form ``::a.b.c.d``. (A
network-specific NAT64 prefix cannot be told from a native IPv6 /64.)"""


def client_source(request: Request) -> str:
    """The client's address. An IPv6 one is keyed by its /64, which one subscriber
    usually holds whole (else every address of it would be a fresh bucket), except an
    IPv4 host's address written as IPv6 (IPv4-mapped ``::ffff:a.b.c.d``, as a dual-stack
    socket or proxy reports an IPv4 client, NAT64's ``64:ff9b::a.b.c.d``, or the old
    ``::a.b.c.d``): that one is
    keyed by its IPv4 address, as the host is when seen directly (a /64 of those would be
    one bucket for every IPv4 client)."""
    host = request.client.host if request.client is not None else "unknown"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        if int(address) > 1 and any(address in net for net in _EMBEDS_IPV4):  # not ::, ::1
            return str(ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF))
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return host


async def _admitted(request: Request) -> str:
    """The request's source, once its bucket gave it a token; else 429 (audited)."""
    state = _attestation_state(request)
    source = client_source(request)
    request.state.rate_checked = True
    action = _ACTIONS.get(request.url.path, "revoke")
    await take_token(state.limiter, source, state.service.sampled, action, "requests")
    return source


async def take_token(
    limiter: TokenBucketLimiter, source: str, sampled: SampledAudit, action: str, what: str
) -> None:
    """Take a token from `source`'s bucket; past its burst, record the refusal (sampled
    per source, as every unauthenticated refusal) and raise 429 `RateLimited` naming the
    limit and when the next token comes. `what` names the requests in the detail."""
    wait = limiter.take(source)
    if wait <= 0:
        return
    record = AuditRecord(action, "rejected", None, RateLimited.reason, None)
    # In a thread: the first refusal of an interval is appended (an fsync).
    await asyncio.to_thread(sampled.append, source, record)
    raise RateLimited(
        f"too many {what} from {source}; retry in {wait:.1f} s "
        f"(at most {limiter.rate:g}/s, bursts of {limiter.burst})",
        retry_after=wait,
    )


_LIMITED = re.compile(r"/v1/(enroll|enroll/activate|attest/nonce|attest|devices/[^/]+/revoke)")
"""The paths whose routes take `SourceDep`: every request to them takes a token."""


async def admit_refused_body(request: Request) -> None:
    """Take the token of a request to a rate-limited endpoint that was refused before its
    dependencies ran (FastAPI decodes a JSON body before it solves them, so a body that is
    not JSON never reached `_admitted`): raises `RateLimited` past the source's burst,
    as the endpoint would. Nothing for other paths, for a request that already took its
    token (a valid JSON body of the wrong shape), or without the app's state."""
    if not _LIMITED.fullmatch(request.url.path):
        return
    if getattr(request.state, "rate_checked", False):
        return
    if getattr(request.state, "attestation", None) is None:
        return
    await _admitted(request)


AttestationDep = Annotated[AttestationState, Depends(_state)]
SourceDep = Annotated[str, Depends(_admitted)]

_ACTIONS = {
    "/v1/enroll": "enroll",
    "/v1/enroll/activate": "activate",
    "/v1/attest/nonce": "nonce",
    "/v1/attest": "attest",
}

attestation_router = APIRouter(tags=["attestation"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "malformed_evidence"},
    401: {"description": "operator_unauthorized"},
    403: {"description": "evidence refused: unknown_ek_root, bad_activation_proof, ..."},
    404: {"description": "device_unknown"},
    409: {"description": "nonce_reused, nonce_expired, device_not_enrolled, ..."},
    413: {"description": "batch_too_large: body over 64 KiB"},
    422: {"description": "malformed_body"},
    429: {"description": "rate_limited: too many requests from this source (Retry-After)"},
}


@attestation_router.post("/v1/enroll", response_model=EnrollmentChallenge, responses=_ERRORS)
async def enroll(
    body: EnrollRequest, state: AttestationDep, source: SourceDep
) -> EnrollmentChallenge:
    """Check the EK certificate against the policy's roots; answer a credential challenge."""
    return await asyncio.to_thread(partial(state.service.enroll, body, source=source))


@attestation_router.post("/v1/enroll/activate", response_model=EnrollmentResult, responses=_ERRORS)
async def activate(
    body: ActivateRequest, state: AttestationDep, source: SourceDep
) -> EnrollmentResult:
    """Complete enrollment with the ActivateCredential proof."""
    return await asyncio.to_thread(partial(state.service.activate, body, source=source))


@attestation_router.post("/v1/attest/nonce", response_model=NonceGrant, responses=_ERRORS)
async def attest_nonce(body: NonceRequest, state: AttestationDep, source: SourceDep) -> NonceGrant:
    """A single-use nonce (with expiry) for the next quote and certification."""
    return await asyncio.to_thread(partial(state.service.issue_nonce, body, source=source))


@attestation_router.post("/v1/attest", response_model=AttestationResult, responses=_ERRORS)
async def attest(
    body: AttestRequest, state: AttestationDep, source: SourceDep
) -> AttestationResult:
    """Verify a quote and the signing key's certification; attest the key until expiry."""
    return await asyncio.to_thread(partial(state.service.attest, body, source=source))


@attestation_router.post(
    "/v1/devices/{device_id}/revoke", response_model=RevocationResult, responses=_ERRORS
)
async def revoke(
    device_id: str,
    body: RevokeRequest,
    state: AttestationDep,
    source: SourceDep,
    authorization: Annotated[str | None, Header()] = None,
) -> RevocationResult:
    """Revoke a device (operator only): refused from its next envelope on."""
    # In a thread: a refusal is audited, and an audit append fsyncs; an unauthenticated
    # caller must not be able to stall the event loop with it.
    await asyncio.to_thread(_check_operator, state, authorization, source)
    return await asyncio.to_thread(state.service.revoke, device_id, body.reason)


def _check_operator(state: AttestationState, authorization: str | None, source: str) -> None:
    expected = state.operator_token
    scheme, _, token = (authorization or "").partition(" ")
    if (
        expected is None
        or scheme.lower() != "bearer"
        or not hmac.compare_digest(token.encode(), expected.encode())
    ):
        # Audited too: an auditor wants to see who tried to revoke without the right.
        state.service.audit_refusal(
            "revoke", None, AttestationReason.OPERATOR_UNAUTHORIZED.value, source=source
        )
        raise AttestationError(
            AttestationReason.OPERATOR_UNAUTHORIZED,
            "revocation needs 'Authorization: Bearer <operator token>'",
        )
