"""Group commit for the audit log: concurrent requests' entries share one transaction.

Every envelope request appends its decisions before it is answered, and each
`AuditLog.append_many` is a transaction with its own fsync. `GroupedAudit.append` hands
the records to a `GroupCommit`: everything queued while the previous transaction ran is
appended in one `append_many`, in arrival order (each call's records stay together and
in order), and a call returns only once its records are committed, so an answer still
follows its audit entries to disk.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from auditlog import AuditLog, AuditRecord
from ingest._errors import AuditUnavailable
from ingest._group_commit import GroupCommit

__all__ = ["GroupedAudit", "append_audited", "audit_unavailable"]


class GroupedAudit:
    """Appends to `audit` from the event loop, one transaction per group of callers."""

    def __init__(self, audit: AuditLog) -> None:
        self.audit = audit
        self._group: GroupCommit[Sequence[AuditRecord], None] = GroupCommit(
            self._append_all, error=audit_unavailable
        )

    async def append(self, records: Sequence[AuditRecord]) -> None:
        """Append `records` durably (in one transaction with other callers' records)."""
        if records:
            await self._group.submit(records)

    def _append_all(self, batches: list[Sequence[AuditRecord]]) -> list[None]:
        self.audit.append_many([record for batch in batches for record in batch])
        return [None] * len(batches)


def audit_unavailable(exc: Exception) -> BaseException:
    """The 503 a request gets when its audit entries did not commit (a fresh exception
    per waiter). Not a bare 500: the request was fine, the ingest's disk was not."""
    if isinstance(exc, AuditUnavailable):
        return AuditUnavailable(exc.detail)
    return AuditUnavailable(f"the audit log did not record this request's decisions: {exc}")


async def append_audited(audit: AuditLog, records: Sequence[AuditRecord]) -> None:
    """`audit.append_many(records)` off the event loop; `AuditUnavailable` if it fails."""
    try:
        await asyncio.to_thread(audit.append_many, records)
    except Exception as exc:
        raise audit_unavailable(exc) from exc
