"""Loss accounting: every dropped measurement or envelope is counted by reason.

The record path never raises into the host app; instead it counts what it dropped so
the app (or a later health report) can see it. Increments happen only on the slow
path, so a lock here costs nothing on the hot path.
"""

from __future__ import annotations

import threading
from enum import StrEnum

__all__ = ["DropCounter", "DropReason"]


class DropReason(StrEnum):
    """Why a measurement, a label or an envelope was dropped."""

    NEGATIVE_AMOUNT = "negative_amount"
    NOT_FINITE = "not_finite"
    WRONG_TYPE = "wrong_type"
    UNKNOWN_SIGNAL = "unknown_signal"
    UNDECLARED_LABEL = "undeclared_label"
    RELEASE_FAILED = "release_failed"
    QUEUE_FULL = "queue_full"
    SEAL_FAILED = "seal_failed"
    SEND_FAILED = "send_failed"
    LEDGER_FAILED = "ledger_failed"
    SPOOL_FAILED = "spool_failed"
    STATE_WRITE_FAILED = "state_write_failed"
    """A released window whose envelope could not be numbered: the device state
    (`client_state.json`, its sequence number and release horizon) could not be written,
    on a full disk say. Its charge stays (it was made durable first); nothing is sent.
    Counted once per window."""
    SPOOL_CORRUPT = "spool_corrupt"
    EXPIRED = "expired"
    NO_FINGERPRINT_KEY = "no_fingerprint_key"
    TIER_REQUIRES_TPM = "tier_requires_tpm"
    """A release of a tier the attestation policy refuses from software keys, withheld
    (never charged) because the device signs with a software key."""
    CONSENT_REVOKED = "consent_revoked"
    """A spooled envelope left with nothing to report once a revoked tier was stripped
    from it: deleted, never sent."""
    PROMPT_TOO_LONG = "prompt_too_long"
    """A prompt longer than `client._redaction.MAX_PROMPT_CHARS`, not redacted nor counted."""
    PROMPT_QUEUE_FULL = "prompt_queue_full"
    """A prompt dropped, not redacted nor counted, because `MAX_QUEUED_PROMPTS` prompts
    were already waiting for the worker (`client._prompt_queue`)."""
    PROMPT_DISCARDED = "prompt_discarded"
    """A prompt still waiting for the worker (background mode) when the consent of its
    signal's tier changed (a grant or a revocation): discarded, so that nothing recorded
    before a decision is counted into a window released under it. Never reported (it
    follows the user's prompts)."""
    ATTRIBUTES_TOO_LARGE = "attributes_too_large"
    """A measurement whose attributes exceed `client._instruments`' bounds (more than
    `MAX_ATTRIBUTES` of them, a key over `MAX_ATTRIBUTE_KEY_CHARS` or a string value
    over `MAX_ATTRIBUTE_VALUE_CHARS`): no declared label or value is that large."""
    STATE_LOADING = "state_loading"
    """A measurement (or queued prompt) recorded in background mode before the worker
    had loaded the device's state: no consent was known yet, so it is discarded. Counted
    per counted unit and per histogram value; never reported to the ingest (it would
    describe activity no consent covers)."""
    CARRIED_DISCARDED = "carried_discarded"
    """Cells carried from the last run's open window (`client._carry`) that no longer
    fit: the policy changed in between, a signal's shape did, their window lies ahead of
    this run's clock, or the record is unreadable. Counted once per record (policy,
    window, unreadable) or per signal (shape)."""
    OPEN_WINDOW_DISCARDED = "open_window_discarded"
    """What the open window held at `Telemetry.shutdown(carry_open_window=False)`:
    discarded, neither released nor carried. Counted per counted unit and per histogram
    value of the consented signals (what a carry would have kept); never reported to
    the ingest (it follows the user's activity)."""
    WINDOW_ALREADY_RELEASED = "window_already_released"
    """A window that overlaps one this device already released (it starts before the
    state's `last_window_end`: a partial window released by an older version, or a
    policy whose window length changed): its cells are discarded, nothing is charged
    or sent. Counted once per window, and only when the window would have been sent
    (a consented tier the key may send)."""
    BATCH_ALREADY_REPORTED = "batch_already_reported"
    """An aggregate-model signal's window of a batch (the policy's aligned window) this
    device already sent reports for: one contribution per batch, so it is not sent
    (never charged)."""
    OTEL_UNDECLARED_INSTRUMENT = "otel_undeclared_instrument"
    """A measurement of an OpenTelemetry instrument the policy's `otel` section does not
    map, or maps to a signal of another kind, or was created with a unit it does not
    declare (`client.otel`)."""
    OTEL_UNDECLARED_ATTRIBUTE = "otel_undeclared_attribute"
    """An OpenTelemetry attribute the instrument's mapping neither maps to a label nor
    ignores: the attribute is dropped, the measurement kept."""
    OTEL_CALLBACK_FAILED = "otel_callback_failed"
    """An observable instrument's callback that raised, returned something other than
    observations, or had not returned when the window closed."""
    EXPIRED_AHEAD = "expired:clock_ahead"
    """A spooled envelope deleted because its window ends so far ahead of the ingest's
    clock that its tiers' retention would end before the ingest's time catches up
    (`client._send_hold`): it can never be delivered in time."""
    # Not losses: envelopes kept in the spool and sent later (`client._send_hold`),
    # counted so the app and the ingest see the delay.
    DEFERRED_BUDGET = "deferred:budget_exceeded"
    """An envelope the ingest refused for its device's budget of the ingest's day: kept
    and sent again after the ingest's next UTC midnight. Counted per refusal."""
    DEFERRED_CLOCK_SKEW = "deferred:clock_skew"
    """An envelope the ingest refused as ahead of its clock: kept, and sent again once
    the ingest's time has caught up (with backoff). Counted per refusal."""
    HELD_AHEAD = "held:clock_ahead"
    """An envelope not sent because its window ends ahead of the ingest's clock (built
    offline with a wall clock ahead): kept until the ingest's time catches up. Counted
    once per envelope and process."""
    # Items the ingest refused are counted as "rejected:<RejectReason>".


class DropCounter:
    """Thread-safe counts of drops, keyed by reason (a `DropReason` or a free string)."""

    __slots__ = ("_counts", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}

    def add(self, reason: str, n: int = 1) -> None:
        """Count `n` drops for `reason`."""
        key = str(reason)
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + n

    def snapshot(self) -> dict[str, int]:
        """A copy of the counts so far."""
        with self._lock:
            return dict(self._counts)

    def reset_after_fork(self) -> None:
        """Give the child a fresh lock (another thread may have held it at fork time)."""
        self._lock = threading.Lock()
