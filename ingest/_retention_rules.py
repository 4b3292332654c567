"""How old a window may be when it arrives: no older than its tiers' retention.

Pure logic on the policies the ingest serves. An honest client strips from its spool
every tier whose retention has ended (`client._spool.Spool.expire`), so only a broken
or hostile device sends such data: stored, it would sit in the warehouse until the next
retention run (and a window of year 1 is no window any fleet figure can use). Each tier
an envelope carries must have ended less than that tier's retention (plus the clock
skew the ingest tolerates) before it was received; an envelope carrying no tier, less
than its policy's longest retention. A policy the ingest knows by hash only is held to
the longest retention of the policies it serves.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from policies import Policy
from schemas import EnvelopeV1, Tier

__all__ = ["RetentionRules"]

_ONE_DAY = timedelta(days=1)


class RetentionRules:
    """The retention of every tier, per served policy (by content hash)."""

    __slots__ = ("_days", "_longest", "_slack")

    def __init__(self, policies: Iterable[Policy], *, slack: timedelta) -> None:
        """`slack`: the clock skew the ingest tolerates (a device whose clock is behind
        the ingest's judges a window a little younger)."""
        self._days: dict[str, dict[Tier, int]] = {
            p.content_hash: dict(p.retention.days) for p in policies
        }
        self._longest = max((max(d.values()) for d in self._days.values()), default=None)
        self._slack = slack

    def problem(self, env: EnvelopeV1, received_at: datetime) -> str | None:
        """Why `env`, received at `received_at`, is past retention; None if it is not."""
        if self._longest is None:
            return None
        age = received_at - env.window_end - self._slack
        if age <= _ONE_DAY:  # every retention is at least a day: the common case
            return None
        days = self._days.get(env.policy_hash)
        tiers = {a.tier for a in env.aggregates} | {r.tier for r in env.reports}
        if not tiers:
            longest = max(days.values()) if days is not None else self._longest
            if age > timedelta(days=longest):
                return (
                    f"the window ended {age.days} days before it arrived; data under "
                    f"this policy is kept {longest} days at most"
                )
            return None
        for tier in sorted(tiers):
            kept = days[tier] if days is not None else self._longest
            if age > timedelta(days=kept):
                return (
                    f"the window ended {age.days} days before it arrived; {tier.value} "
                    f"data is kept {kept} days (the policy's retention)"
                )
        return None
