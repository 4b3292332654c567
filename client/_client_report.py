"""Client reports: the drops counted since the last report, carried by the next envelope.

Like Sentry's client reports: `dropped()` counts every loss by reason, and the ingest
learns them later, inside the next envelope sent (`EnvelopeV1.client_report`, signed
with the envelope). A report counts as delivered only once the ingest accepted the
envelope that carried it; until then its counts are reported again. The counts live in
memory: what a process dropped and could not report before it ended is not reported.

Reported: only the operational reasons (`REPORTED`, `REPORTED_PREFIXES`), whose counts
follow the client's own work, which runs whatever the user does (a window is released
even when empty): releases, sealing, the spool, sends, the ingest's rejections, key
fallbacks. Never reported: every reason counted per measurement the app recorded
(`negative_amount`, `undeclared_label`, `no_fingerprint_key`, the OpenTelemetry
bridge's `otel_undeclared_*`, ...) or per cell carried over: those counts follow the
user's activity (one `otel_undeclared_attribute` per inference is the exact number of
inferences, of a tier the user may not have consented to, without noise or budget),
and reasons that describe the user's content (`prompt_too_long`). The app sees all of
them locally, in `Telemetry.dropped()`. A reason not listed is not reported: a new
drop reason stays on the device until someone decides it is operational. Reason codes
that do not fit the wire's pattern (a free-form error text after `tpm_unattested:`)
are reported as `<prefix>:other`.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from client._drops import DropCounter, DropReason
from schemas import MAX_CLIENT_REPORT_REASONS, ClientReport

__all__ = ["REPORTED", "REPORTED_PREFIXES", "ClientReporter", "PendingReport", "is_reported"]

REPORTED: frozenset[str] = frozenset(
    {
        DropReason.RELEASE_FAILED.value,
        DropReason.QUEUE_FULL.value,  # the spool's queue, per envelope
        DropReason.SEAL_FAILED.value,
        DropReason.SEND_FAILED.value,
        DropReason.LEDGER_FAILED.value,
        DropReason.SPOOL_FAILED.value,
        DropReason.SPOOL_CORRUPT.value,
        DropReason.EXPIRED.value,
        DropReason.TIER_REQUIRES_TPM.value,
        DropReason.CONSENT_REVOKED.value,
        DropReason.BATCH_ALREADY_REPORTED.value,
        # Once per window at most, and only for a window that would have been sent: it
        # follows when windows were released (versions, restarts, policy windows), which
        # the ingest sees in the envelopes anyway, never what was recorded; it also
        # tells the operator why a device skipped a window after an upgrade.
        DropReason.WINDOW_ALREADY_RELEASED.value,
        DropReason.OTEL_CALLBACK_FAILED.value,  # per callback and collection
    }
)
"""The drop reasons a client report carries: each counted per release, envelope, send or
collection, never per measurement (see the module docstring)."""
REPORTED_PREFIXES: tuple[str, ...] = (
    "rejected:",
    "deferred:",
    "held:",
    "expired:",
    "tpm_unavailable:",
    "tpm_failed:",
    "tpm_unattested:",
)
"""Families of reported reasons: the ingest's rejections, envelopes kept for later,
spooled envelopes expired, key fallbacks."""
_WIRE_REASON = re.compile(r"^[a-z0-9_]+(:[A-Za-z0-9_.-]+)?$")
_MAX_REASON_CHARS = 96


@dataclass(frozen=True, slots=True)
class PendingReport:
    """A report about to be sent, and the counts (by local reason) it covers."""

    report: ClientReport
    covers: dict[str, int]


class ClientReporter:
    """Builds the next report from a `DropCounter`; remembers what was delivered."""

    def __init__(self, drops: DropCounter, clock: Callable[[], datetime]) -> None:
        self._drops = drops
        self._clock = clock
        self._lock = threading.Lock()
        self._delivered: dict[str, int] = {}
        self._since: datetime | None = None

    def pending(self) -> PendingReport | None:
        """The counts not yet delivered, as a report; None when there are none."""
        with self._lock:
            covers = {
                reason: n - self._delivered.get(reason, 0)
                for reason, n in self._drops.snapshot().items()
                if is_reported(reason) and n > self._delivered.get(reason, 0)
            }
            since = self._since
        if not covers:
            return None
        counts: dict[str, int] = {}
        for reason, n in covers.items():
            key = wire_reason(reason)
            counts[key] = counts.get(key, 0) + n
        if len(counts) > MAX_CLIENT_REPORT_REASONS:
            # The largest counts first; the rest wait for the next report.
            kept = sorted(counts, key=lambda k: -counts[k])[:MAX_CLIENT_REPORT_REASONS]
            covers = {r: n for r, n in covers.items() if wire_reason(r) in kept}
            counts = {k: counts[k] for k in kept}
        counts = {k: min(n, 2**31 - 1) for k, n in counts.items()}
        return PendingReport(ClientReport(since=since, counts=counts), covers)

    def delivered(self, pending: PendingReport) -> None:
        """The envelope carrying `pending` was accepted: its counts are reported."""
        with self._lock:
            for reason, n in pending.covers.items():
                self._delivered[reason] = self._delivered.get(reason, 0) + n
            self._since = self._clock()

    def reset_after_fork(self) -> None:
        """A fresh lock in a forked child."""
        self._lock = threading.Lock()


def is_reported(reason: str) -> bool:
    """Whether drops of `reason` travel in client reports (operational reasons only)."""
    return reason in REPORTED or reason.startswith(REPORTED_PREFIXES)


def wire_reason(reason: str) -> str:
    """`reason` as the wire accepts it: unchanged, or `<prefix>:other`."""
    if len(reason) <= _MAX_REASON_CHARS and _WIRE_REASON.match(reason):
        return reason
    prefix = reason.split(":", 1)[0]
    if len(prefix) <= _MAX_REASON_CHARS - 6 and re.fullmatch(r"[a-z0-9_]+", prefix):
        return f"{prefix}:other"
    return "other"
