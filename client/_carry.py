"""The open window's aggregate-model cells, carried across a restart. Pure data.

A device contributes one Prio3 report per signal and batch (the policy's aligned
window). Releasing the open window early at shutdown would spend that one contribution
on a partial day and drop everything recorded after a restart on the same day. So at
shutdown the aggregate signals' cells are carried instead: serialised here, stored
encrypted by the spool (`Spool.put_carried` / `take_carried`), and added back into the
cells when the client starts again. The restarted client's first window continues the
one that was open, so the carried counts land in the batch they were recorded in.
Nothing is released or charged for them until then.

Carried cells are dropped (and counted) when the policy changed in between, or when a
signal's shape (cells, buckets) no longer matches.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from client._aggregation import HistogramSnapshot

__all__ = ["CarriedWindow", "decode_carried", "encode_carried"]

_VERSION = 1


@dataclass(frozen=True, slots=True)
class CarriedWindow:
    """Raw cells of the aggregate signals, by signal name, under one policy."""

    policy_hash: str
    counters: Mapping[str, list[int]]
    histograms: Mapping[str, list[HistogramSnapshot]]

    def __bool__(self) -> bool:
        return any(any(v) for v in self.counters.values()) or any(
            any(any(s.counts) for s in snaps) for snaps in self.histograms.values()
        )


def encode_carried(window: CarriedWindow) -> bytes:
    """The JSON bytes to store (encrypted by the caller)."""
    return json.dumps(
        {
            "version": _VERSION,
            "policy_hash": window.policy_hash,
            "counters": dict(window.counters),
            "histograms": {
                name: [{"counts": s.counts, "total": s.total} for s in snaps]
                for name, snaps in window.histograms.items()
            },
        },
        separators=(",", ":"),
    ).encode()


def decode_carried(data: bytes) -> CarriedWindow | None:
    """The carried window, or None if `data` is not one this version wrote."""
    try:
        raw: Any = json.loads(data)
        if not isinstance(raw, dict) or raw.get("version") != _VERSION:
            return None
        counters = {str(name): [int(v) for v in values] for name, values in raw["counters"].items()}
        histograms = {
            str(name): [
                HistogramSnapshot([int(c) for c in s["counts"]], float(s["total"])) for s in snaps
            ]
            for name, snaps in raw["histograms"].items()
        }
        return CarriedWindow(str(raw["policy_hash"]), counters, histograms)
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
