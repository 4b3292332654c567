"""How old a window may be when it arrives: no older than its tiers' retention.

Pure logic on the policies the ingest serves. An honest client strips from its spool
every tier whose retention has ended (`client._spool.Spool.expire`, at each window
close), so only a broken or hostile device sends such data: stored, it would sit in the
warehouse until the next retention run (and a window of year 1 is no window any fleet
figure can use). Each tier an envelope carries must have ended less than that tier's
retention, plus a grace, before it was received; an envelope carrying no tier, less
than its policy's longest retention plus the grace. A policy the ingest knows by hash
only is held to the longest retention and grace of the policies it serves, counted
from its window's start (its window's length is not checked).

The grace is what an honest client may take past a tier's retention: the client strips
expired tiers when a window closes, so a tier can expire up to one window before the
next strip, then wait for the budget (`client._send_hold`, at most 15 minutes) and for
the ingest's clock (the skew it tolerates). Without it, an envelope sent in that gap
would be refused whole (`window_expired` is final to the client), the tiers still
within their retention with it. The grace is the policy's window, one hour and the
skew tolerance; the warehouse's retention run deletes what the grace lets through.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from policies import Policy
from schemas import EnvelopeV1, Tier

__all__ = ["RetentionRules"]

_ONE_DAY = timedelta(days=1)
_CLIENT_HOLD = timedelta(hours=1)
"""Covers the client's budget hold (at most 15 minutes) and its send retries."""


class RetentionRules:
    """The retention of every tier, per served policy (by content hash)."""

    __slots__ = ("_days", "_grace", "_longest", "_longest_grace")

    def __init__(self, policies: Iterable[Policy], *, slack: timedelta) -> None:
        """`slack`: the clock skew the ingest tolerates (a device whose clock is behind
        the ingest's judges a window a little younger)."""
        served = list(policies)
        self._days: dict[str, dict[Tier, int]] = {
            p.content_hash: dict(p.retention.days) for p in served
        }
        self._grace: dict[str, timedelta] = {
            p.content_hash: timedelta(seconds=p.window_seconds) + _CLIENT_HOLD + slack
            for p in served
        }
        self._longest = max((max(d.values()) for d in self._days.values()), default=None)
        self._longest_grace = max(self._grace.values(), default=slack)

    def problem(self, env: EnvelopeV1, received_at: datetime) -> str | None:
        """Why `env`, received at `received_at`, is past retention; None if it is not."""
        if self._longest is None:
            return None
        days = self._days.get(env.policy_hash)
        if days is None:  # known by hash only: no window check, so from its start
            age = received_at - env.window_start - self._longest_grace
            if age > timedelta(days=self._longest):
                return (
                    f"the window started {(received_at - env.window_start).days} days "
                    f"before it arrived; data is kept {self._longest} days at most"
                )
            return None
        age = received_at - env.window_end - self._grace[env.policy_hash]
        if age <= _ONE_DAY:  # every retention is at least a day: the common case
            return None
        tiers = {a.tier for a in env.aggregates} | {r.tier for r in env.reports}
        if not tiers:
            longest = max(days.values())
            if age > timedelta(days=longest):
                return (
                    f"the window ended {(received_at - env.window_end).days} days before it "
                    f"arrived; data under this policy is kept {longest} days at most"
                )
            return None
        for tier in sorted(tiers):
            kept = days[tier]
            if age > timedelta(days=kept):
                return (
                    f"the window ended {(received_at - env.window_end).days} days before "
                    f"it arrived; {tier.value} data is kept {kept} days (the policy's "
                    "retention)"
                )
        return None
