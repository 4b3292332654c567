"""The ingest's consent check: an envelope may carry only tiers its consent covers."""

from __future__ import annotations

from schemas import EnvelopeV1

__all__ = ["consent_problem"]


def consent_problem(envelope: EnvelopeV1) -> str | None:
    """Why `envelope` may not be accepted for lack of consent, or None.

    Every aggregate's and report's tier must be among `consented_tiers` (which the device signed
    with the envelope, together with the hash of the consent records they come from).
    """
    tiers = set(envelope.consented_tiers)
    carried = {a.tier for a in envelope.aggregates} | {r.tier for r in envelope.reports}
    missing = sorted(t.value for t in carried if t not in tiers)
    if missing:
        return (
            f"aggregates or reports of tier(s) {missing} but consent only for "
            f"{sorted(t.value for t in tiers)}"
        )
    return None
