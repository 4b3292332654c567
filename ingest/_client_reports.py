"""Client reports (`EnvelopeV1.client_report`): what a device dropped, in the audit log.

A device counts every drop by reason and sends the counts since its last report inside
a later envelope, signed with it (docs/client.md, "Loss accounting"). The ingest keeps
one audit entry per accepted envelope that carries a report: action `client_report`,
the device, and the counts as compact JSON in the detail, so an operator can see
which devices lose what (`quietwire audit list --action client_report`). The counts are
operational, never derived from recorded values, and carry no privacy budget.
"""

from __future__ import annotations

import json

from auditlog import AuditRecord
from schemas import EnvelopeV1

__all__ = ["client_report_record"]


def client_report_record(envelope: EnvelopeV1) -> AuditRecord | None:
    """The audit entry for `envelope`'s client report, or None if it carries none."""
    report = envelope.client_report
    if report is None:
        return None
    body = {
        "envelope_id": str(envelope.envelope_id),
        "since": report.since.isoformat() if report.since is not None else None,
        "counts": dict(sorted(report.counts.items())),
    }
    return AuditRecord(
        "client_report",
        "accepted",
        envelope.device_id,
        None,
        json.dumps(body, separators=(",", ":")),
    )
