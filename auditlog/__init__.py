"""Quietwire's tamper-evident audit log: the ingest appends every decision to it and
auditors verify it. A contract package: it imports neither the ingest nor analytics.
"""

from auditlog._checkpoints import (
    AuditReport,
    checkpoint_message,
    checkpoint_signer,
    parse_audit_key,
    verify_checkpoints,
    verify_log,
)
from auditlog._errors import AuditLogError
from auditlog._log import (
    AUDIT_ACTIONS,
    GENESIS_HASH,
    AuditDecision,
    AuditEntry,
    AuditLog,
    AuditRecord,
    ChainReport,
    Checkpoint,
    CheckpointSigner,
    entry_hash,
    verify_entries,
)

__all__ = [
    "AUDIT_ACTIONS",
    "GENESIS_HASH",
    "AuditDecision",
    "AuditEntry",
    "AuditLog",
    "AuditLogError",
    "AuditRecord",
    "AuditReport",
    "ChainReport",
    "Checkpoint",
    "CheckpointSigner",
    "checkpoint_message",
    "checkpoint_signer",
    "entry_hash",
    "parse_audit_key",
    "verify_checkpoints",
    "verify_entries",
    "verify_log",
]
