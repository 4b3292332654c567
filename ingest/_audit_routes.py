"""The audit key's public half, for auditors: ``GET /v1/audit-key``.

An auditor fetches it once, keeps it somewhere the ingest's operators cannot change,
and passes it to ``quietwire audit verify --audit-key`` (``python -m ingest audit-key``
prints the same key from the state directory).
"""

from __future__ import annotations

from typing import Literal, cast

from fastapi import APIRouter, Request
from pydantic import BaseModel

__all__ = ["AuditKey", "audit_router"]


class AuditKey(BaseModel):
    """The Ed25519 public key that signs the audit log's checkpoints."""

    algorithm: Literal["ed25519"] = "ed25519"
    public_key: str
    """32 bytes, base64."""


audit_router = APIRouter(tags=["audit"])


@audit_router.get("/v1/audit-key", response_model=AuditKey)
async def audit_key(request: Request) -> AuditKey:
    """The public key auditors verify checkpoints with."""
    return cast(AuditKey, request.state.audit_key)
