"""The audit log package's one error type."""

from __future__ import annotations

__all__ = ["AuditLogError"]


class AuditLogError(Exception):
    """An audit log file is missing, not SQLite, not an audit log, or opened read-only
    and written to."""

    reason = "audit_log_error"
