"""Quietwire's tamper-evident audit log: the ingest appends every decision to it and
auditors verify it. A contract package: it imports neither the ingest nor analytics.
"""

from auditlog._errors import AuditLogError
from auditlog._log import (
    GENESIS_HASH,
    AuditDecision,
    AuditEntry,
    AuditLog,
    AuditRecord,
    ChainReport,
    entry_hash,
    verify_entries,
)

__all__ = [
    "GENESIS_HASH",
    "AuditDecision",
    "AuditEntry",
    "AuditLog",
    "AuditLogError",
    "AuditRecord",
    "ChainReport",
    "entry_hash",
    "verify_entries",
]
