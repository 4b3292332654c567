"""The drift test's plot: both sides' histograms with their noise band, as inline SVG.

In the style of `analytics._plots` (matplotlib object API, SVG text for the
self-contained HTML report). Each bucket shows the share of the side's events and, as a
shaded band, where its noise alone could have put it (the bucket's noise at level
1 - alpha, over the side's events): buckets whose bands overlap are not told apart.
"""

from __future__ import annotations

import polars as pl
from matplotlib.figure import Figure

from analytics._drift import DriftResult
from analytics._plots import _svg, bucket_label

__all__ = ["drift_plot"]

_SIDES = (("a", "#1f77b4"), ("b", "#d62728"))


def drift_plot(result: DriftResult) -> str | None:
    """Both sides' bucket shares with noise bands, or None when a side has no events
    above zero (there is nothing to draw: the report says 'not estimable')."""
    frames = [result.buckets.filter(pl.col("side") == s).sort("bucket_index") for s, _ in _SIDES]
    if any(f.is_empty() or f["share"].is_nan().any() for f in frames):
        return None
    uppers = frames[0]["bucket_upper"].to_list()
    labels = [bucket_label(u, uppers[k - 1] if k else None) for k, u in enumerate(uppers)]
    fig = Figure(figsize=(8.6, 3.6))
    ax = fig.add_subplot()
    width = 0.38
    for j, ((side, color), frame) in enumerate(zip(_SIDES, frames, strict=True)):
        pos = [k + (j - 0.5) * width for k in range(frame.height)]
        name = result.a if side == "a" else result.b
        ax.bar(pos, frame["share"].to_list(), width=width, color=color, alpha=0.75, label=name)
        lows = frame["share_low"].fill_nan(0.0).clip(0.0, 1.0).to_list()
        highs = frame["share_high"].fill_nan(1.0).clip(0.0, 1.0).to_list()
        ax.bar(
            pos,
            [h - lo for lo, h in zip(lows, highs, strict=True)],
            bottom=lows,
            width=width,
            color=color,
            alpha=0.18,
            edgecolor="none",
        )
    step = max(1, -(-len(labels) // 12))
    ax.set_xticks(range(len(labels))[::step], labels[::step], rotation=45, fontsize=7, ha="right")
    top = max(float(f["share"].max()) for f in frames)  # type: ignore[arg-type]
    ax.set_ylim(0.0, min(1.0, max(top * 1.6, 0.05)))
    ax.set_ylabel("share of the side's events")
    ax.set_title(
        f"{result.signal}: {result.verdict} (alpha {result.alpha:g}); "
        f"shaded: each bucket's noise at {1 - result.alpha:.0%}",
        fontsize="medium",
    )
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize="small", loc="upper right")
    return _svg(fig)
