"""The open window's cells, carried across a restart. Pure data.

A device contributes at most one release per aligned policy window (the ingest refuses
anything else), so `Telemetry.shutdown` releases no partial window: by default it
carries the open window's cells of every consented signal, local and aggregate model
alike, to the next run on the same state directory. They are serialised here, stored
encrypted by the spool (`Spool.put_carried` / `read_carried`, kept until the window
it belongs to is released: `drop_carried`) and, when the client
starts again:

- if their window is the one open now, added back into its cells, so the window's data
  of both runs lands in one release at the window's end;
- if their window has ended, released late, on their own, as an envelope for exactly
  that window, at the first collect after the start (never mixed with what the new run
  records);
- if the policy changed in between, a signal's shape (cells, buckets) no longer
  matches, or the window lies ahead of the new run's clock: dropped and counted
  (`carried_discarded`).

Nothing is released or charged for them until then. The record is written even when
every cell is zero: whether a window is released must not depend on what was recorded.
It is not written at all when no tier is consented at the cut: a window released later
would say the app ran when the user had agreed to nothing.

The record names the tiers consented at the cut (`tiers`, since version 3). A late
release releases, and is charged for, only those of them still consented then; a
consent decision that discards a tier's data (a revocation, or a grant of a tier not
consented before) removes the tier from the record on disk, cells and name, before the
decision is written (`without_tiers`), so neither a crash nor a grant made afterwards
brings the window back for that tier.

A late release is charged to its own UTC day, and to the last 24 real hours as of an
instant between the moment its window was cut short (`carried_at`, the budget clock's
reading at shutdown: its data ends there) and its release: the earliest with room
(`PrivacyGate.late_reading`), so that the app starting again in the morning instead of
running past midnight, or a shutdown a little earlier in the day than the one before,
does not cost a window its release. The cap holds in real time all the same: every
charge is stamped with a real instant no later than its release, and granted only if
the charges within 24 real hours of that instant leave room.

Version 1 records (written before windows were carried whole: aggregate-model cells
only, and no window) are added into the open window, whatever it is. Records of
versions 1 and 2 do not name their tiers (`tiers` None): the consent at the release
decides, as it did when they were written.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from client._aggregation import HistogramSnapshot
from client._clock import ClockReading
from schemas import Tier

__all__ = ["CarriedWindow", "decode_carried", "encode_carried", "without_tiers"]

_VERSION = 3
_READABLE = (1, 2, 3)


@dataclass(frozen=True, slots=True)
class CarriedWindow:
    """Raw cells of consented signals, by signal name, of one window under one policy."""

    policy_hash: str
    counters: Mapping[str, list[int]]
    histograms: Mapping[str, list[HistogramSnapshot]]
    window_start: datetime | None
    """Start of the aligned window the cells were recorded in; None in a version 1
    record."""
    carried_at: ClockReading | None = None
    """The budget clock's reading when the window was cut short (its data ends there):
    a late release is charged as of then. None in a record written without one."""
    tiers: frozenset[Tier] | None = None
    """The tiers consented at the cut and not withdrawn since: the only ones a late
    release may release. None in a record of version 1 or 2 (the consent at the release
    decides)."""


def encode_carried(window: CarriedWindow) -> bytes:
    """The JSON bytes to store (encrypted by the caller), in the current version.

    A window without a start (a version 1 record rewritten by `without_tiers`) keeps
    none, and one without tiers (versions 1 and 2) keeps None: what they meant when
    they were written."""
    return json.dumps(
        {
            "version": _VERSION,
            "policy_hash": window.policy_hash,
            "window_start": None
            if window.window_start is None
            else window.window_start.isoformat(),
            "tiers": None if window.tiers is None else sorted(t.value for t in window.tiers),
            "carried_at": None
            if window.carried_at is None
            else [window.carried_at.wall, window.carried_at.boot, window.carried_at.mono],
            "counters": dict(window.counters),
            "histograms": {
                name: [{"counts": s.counts, "total": s.total} for s in snaps]
                for name, snaps in window.histograms.items()
            },
        },
        separators=(",", ":"),
    ).encode()


def decode_carried(data: bytes) -> CarriedWindow | None:
    """The carried window, or None if `data` is not a record of a known version."""
    try:
        raw: Any = json.loads(data)
        if not isinstance(raw, dict) or raw.get("version") not in _READABLE:
            return None
        start: datetime | None = None
        carried_at: ClockReading | None = None
        tiers: frozenset[Tier] | None = None
        if raw["version"] >= 3 and raw["tiers"] is not None:
            tiers = frozenset(Tier(t) for t in raw["tiers"])
        # Version 3 keeps a rewritten version 1 record's missing start.
        if raw["version"] == 2 or (raw["version"] >= 3 and raw["window_start"] is not None):
            start = datetime.fromisoformat(raw["window_start"])
            if start.tzinfo is None:
                return None
            if (at := raw.get("carried_at")) is not None:
                wall, boot, mono = at
                carried_at = ClockReading(float(wall), str(boot), float(mono))
                if not (math.isfinite(carried_at.wall) and math.isfinite(carried_at.mono)):
                    return None
        counters = {str(name): [int(v) for v in values] for name, values in raw["counters"].items()}
        histograms = {
            str(name): [
                HistogramSnapshot([int(c) for c in s["counts"]], float(s["total"])) for s in snaps
            ]
            for name, snaps in raw["histograms"].items()
        }
        return CarriedWindow(
            str(raw["policy_hash"]), counters, histograms, start, carried_at, tiers
        )
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


def without_tiers(
    window: CarriedWindow, tiers: Collection[Tier], tier_of: Mapping[str, Tier]
) -> CarriedWindow | None:
    """`window` without the cells of the signals of `tiers` (by `tier_of`, signal name
    to tier) nor those tiers among its own; None when no tier is left (nothing may be
    released from it any more). `window` itself when it holds nothing of `tiers`.

    A record that does not name its tiers (versions 1 and 2) stood for every tier the
    consent at the release allows: it keeps standing for every tier but these."""
    own = window.tiers if window.tiers is not None else frozenset(Tier)
    gone = own & frozenset(tiers)
    if not gone:
        return window
    if own == gone:
        return None

    def kept(cells: Mapping[str, Any]) -> dict[str, Any]:
        # A signal this policy does not know is kept: the restore counts it.
        return {name: raw for name, raw in cells.items() if tier_of.get(name) not in gone}

    return replace(
        window,
        counters=kept(window.counters),
        histograms=kept(window.histograms),
        tiers=own - gone,
    )
