"""The report's plots: matplotlib figures (object API, no pyplot state) as inline SVG.

Every plot draws an estimate with its interval and leaves out what the data cannot
bound (a mean whose count is not clearly above zero): drawing noise invites reading it.
Axes are fitted to the estimates, not to the widest interval; an interval that runs off
the axis ends in an arrow head.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl
from matplotlib.figure import Figure

__all__ = [
    "bucket_label",
    "buckets_figure",
    "cell_label",
    "cells_figure",
    "data_marks",
    "fleet_figure",
    "grouped_figure",
    "window_figure",
]

_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf")


def cell_label(attributes: str) -> str:
    """`a=x b=y` for a canonical attributes JSON, `(all)` for none."""
    attrs = json.loads(attributes)
    return " ".join(f"{k}={v}" for k, v in sorted(attrs.items())) or "(all)"


def _short(x: float) -> str:
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e4, "k")):
        if abs(x) >= size:
            return f"{x / size:.3g}{suffix}"
    return f"{x:.3g}"


def bucket_label(upper: float | None, previous: float | None) -> str:
    """A bucket's range as a short tick label: `≤0.01`, `0.01-0.02`, `>81.9`, `262k-1.05M`."""
    if upper is None:
        return f">{_short(previous)}" if previous is not None else "all"
    if previous is None:
        return f"≤{_short(upper)}"
    return f"{_short(previous)}-{_short(upper)}"


def data_marks(fig: Figure) -> int:
    """How many data artists `fig` draws: lines with a finite point, non-empty
    collections (markers, bands, error bars) and bars; axes, ticks and text are not data."""
    marks = 0
    for ax in fig.axes:
        for line in ax.get_lines():
            ys = np.asarray(line.get_ydata(), dtype=float)
            marks += int(bool(np.isfinite(ys).any()))
        for coll in ax.collections:
            offsets = np.asarray(coll.get_offsets())
            marks += int(len(coll.get_paths()) > 0 or offsets.size > 0)
        marks += sum(1 for patch in ax.patches if patch.get_visible())
    return marks


def _svg(fig: Figure) -> str:
    """The figure as inline SVG whose root says how many data artists it draws
    (`data-marks`), so a page's test can tell a plot with data from an empty frame."""
    marks = data_marks(fig)
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    text = buf.getvalue()
    svg = text[text.index("<svg") :]
    return svg.replace("<svg", f'<svg class="qw-plot" data-marks="{marks}"', 1)


def _bounded(frame: pl.DataFrame, value: str) -> pl.DataFrame:
    return frame.filter(
        pl.col(value).is_not_null()
        & pl.col(value).is_not_nan()
        & pl.col("ci_low").is_not_null()
        & pl.col("ci_high").is_not_null()
    )


def _value_limits(
    values: Sequence[float], lows: Sequence[float], highs: Sequence[float], *, floor: bool
) -> tuple[float, float]:
    """Axis limits that show every estimate and its interval unless one interval is
    far wider than the estimates' spread (it is then cut, with an arrow head)."""
    top = max(values)
    bottom = min(values)
    spread = max(top - bottom, abs(top), abs(bottom), 1e-12)
    hi = min(max(highs), top + 1.5 * spread)
    lo = max(min(lows), bottom - 1.5 * spread)
    if floor:
        lo = min(lo, 0.0)
    pad = 0.05 * (hi - lo or 1.0)
    return lo - pad, hi + pad


def _interval_bars(
    ax: Any,
    pos: Sequence[float],
    est: Sequence[float],
    lows: Sequence[float],
    highs: Sequence[float],
    limits: tuple[float, float],
    *,
    color: str,
    label: str | None,
    horizontal: bool = False,
) -> None:
    lo_lim, hi_lim = limits
    for p, lo, hi in zip(pos, lows, highs, strict=True):
        a, b = max(lo, lo_lim), min(hi, hi_lim)
        if horizontal:
            ax.plot([a, b], [p, p], color=color, linewidth=2.2, solid_capstyle="butt")
        else:
            ax.plot([p, p], [a, b], color=color, linewidth=2.2, solid_capstyle="butt")
        for end, cut, mark in ((hi, hi > hi_lim, "^>"), (lo, lo < lo_lim, "v<")):
            edge = hi_lim if end == hi else lo_lim
            if cut:
                xy = (edge, p) if horizontal else (p, edge)
                ax.plot(*xy, marker=mark[1] if horizontal else mark[0], color=color, ms=6)
            elif horizontal:
                ax.plot([end, end], [p - 0.12, p + 0.12], color=color, linewidth=1.2)
            else:
                ax.plot([p - 0.06, p + 0.06], [end, end], color=color, linewidth=1.2)
    if horizontal:
        ax.plot(est, pos, "o", color="white", mec=color, mew=1.8, ms=6, label=label, zorder=3)
    else:
        ax.plot(pos, est, "o", color="white", mec=color, mew=1.8, ms=6, label=label, zorder=3)


def grouped_figure(
    frame: pl.DataFrame,
    value: str,
    x_label: str,
    series_label: str,
    title: str,
    ylabel: str,
    *,
    floor: bool = True,
    label_format: str = "{:.3g}",
) -> str:
    """Estimates per `x_label` category (x axis), one series per `series_label` value,
    each with its interval: side by side, so a series outside another's interval in the
    same category stands out. Rows without an interval are left out."""
    data = _bounded(frame, value)
    xs = sorted(data[x_label].unique().to_list(), key=lambda v: (v == "other", v))
    series = sorted(data[series_label].unique().to_list(), key=lambda v: (v == "other", v))
    fig = Figure(figsize=(8.6, 3.9))
    ax = fig.add_subplot()
    limits = _value_limits(
        data[value].to_list(), data["ci_low"].to_list(), data["ci_high"].to_list(), floor=floor
    )
    width = 0.7 / max(len(series), 1)
    for j, s in enumerate(series):
        part = data.filter(pl.col(series_label) == s)
        pos = [xs.index(x) + (j - (len(series) - 1) / 2) * width for x in part[x_label].to_list()]
        _interval_bars(
            ax,
            pos,
            part[value].to_list(),
            part["ci_low"].to_list(),
            part["ci_high"].to_list(),
            limits,
            color=_COLORS[j % len(_COLORS)],
            label=f"{series_label}={s}",
        )
        for p, v in zip(pos, part[value].to_list(), strict=True):
            ax.annotate(
                label_format.format(v),
                (p, v),
                xytext=(5, 0),
                textcoords="offset points",
                fontsize=7,
                va="center",
            )
    ax.set_xticks(range(len(xs)), [f"{x_label}={x}" for x in xs])
    ax.set_xlim(-0.6, len(xs) - 0.4)
    ax.set_ylim(*limits)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize="medium")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize="small", loc="best")
    return _svg(fig)


def cells_figure(
    frame: pl.DataFrame,
    value: str,
    names: Sequence[str],
    title: str,
    xlabel: str,
    *,
    floor: bool = True,
) -> str:
    """One row per cell (named by `names`), estimate and interval on the x axis; the axis
    includes zero if `floor`."""
    data = frame.with_columns(pl.Series("_name", list(names)))
    data = _bounded(data, value).sort(value)
    fig = Figure(figsize=(8.6, 0.32 * max(data.height, 3) + 1.2))
    ax = fig.add_subplot()
    limits = _value_limits(
        data[value].to_list(), data["ci_low"].to_list(), data["ci_high"].to_list(), floor=floor
    )
    pos = list(range(data.height))
    _interval_bars(
        ax,
        pos,
        data[value].to_list(),
        data["ci_low"].to_list(),
        data["ci_high"].to_list(),
        limits,
        color=_COLORS[0],
        label=None,
        horizontal=True,
    )
    if limits[0] <= 0.0 <= limits[1]:
        ax.axvline(0.0, color="#999", linewidth=0.8)
    ax.set_yticks(pos, data["_name"].to_list(), fontsize="small")
    ax.set_xlim(*limits)
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize="medium")
    ax.grid(alpha=0.3, axis="x")
    return _svg(fig)


def window_figure(
    frame: pl.DataFrame, value: str, label: str | None, title: str, ylabel: str
) -> str | None:
    """Estimates per window, one line per value of `label`; None if nothing is bounded."""
    data = _bounded(frame, value)
    if not data.height:
        return None
    fig = Figure(figsize=(8.6, 3.4))
    ax = fig.add_subplot()
    groups = sorted(data[label].unique().to_list()) if label else [None]
    for i, g in enumerate(groups):
        part = data if label is None else data.filter(pl.col(label) == g)
        part = part.sort("window_start")
        # Dodge the groups sideways by a few percent of a window so bars don't overlap.
        shift = (i - (len(groups) - 1) / 2) * 0.06
        xs: list[Any] = [
            start + (end - start) * (0.5 + shift)
            for start, end in part.select("window_start", "window_end").iter_rows()
        ]
        est = part[value].to_list()
        ax.errorbar(
            xs,
            est,
            yerr=[
                [e - lo for e, lo in zip(est, part["ci_low"].to_list(), strict=True)],
                [hi - e for e, hi in zip(est, part["ci_high"].to_list(), strict=True)],
            ],
            capsize=3,
            marker="o",
            markersize=3,
            color=_COLORS[i % len(_COLORS)],
            label=f"{label}={g}" if g is not None else None,
        )
    first: Any = frame["window_start"].min()
    last: Any = frame["window_end"].max()
    ax.set_xlim(first, last)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize="medium")
    ax.grid(alpha=0.3)
    if label:
        ax.legend(fontsize="small")
    fig.autofmt_xdate()
    return _svg(fig)


def fleet_figure(fleet: pl.DataFrame) -> str:
    """Small multiples: each signal's fleet total (and mean) per window."""
    panels = fleet.select("signal", "measure").unique(maintain_order=True).rows()
    cols = 2
    rows = (len(panels) + cols - 1) // cols
    fig = Figure(figsize=(9.0, 2.6 * rows))
    for i, (name, measure) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        part = _bounded(
            fleet.filter((pl.col("signal") == name) & (pl.col("measure") == measure)), "estimate"
        ).sort("window_start")
        est = part["estimate"].to_list()
        middles: list[Any] = [
            start + (end - start) / 2
            for start, end in part.select("window_start", "window_end").iter_rows()
        ]
        ax.errorbar(
            middles,
            est,
            yerr=[
                [e - lo for e, lo in zip(est, part["ci_low"].to_list(), strict=True)],
                [hi - e for e, hi in zip(est, part["ci_high"].to_list(), strict=True)],
            ],
            capsize=3,
            marker="o",
            markersize=3,
        )
        ax.set_title(f"{name}: {measure}", fontsize="small")
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize="x-small")
    fig.autofmt_xdate()
    fig.tight_layout()
    return _svg(fig)


def buckets_figure(
    cells: Sequence[tuple[str, pl.DataFrame, float | None]], title: str, cols: int = 3
) -> str:
    """Small multiples: one histogram per cell, events per bucket with intervals.

    `cells` are (name, bucket rows sorted by bucket_index, event count or None).
    Negative estimates are noise around small counts and are drawn as they are.
    """
    rows = (len(cells) + cols - 1) // cols
    fig = Figure(figsize=(9.6, 2.5 * rows + 0.6))
    for i, (name, part, events) in enumerate(cells):
        ax = fig.add_subplot(rows, cols, i + 1)
        uppers = part["bucket_upper"].to_list()
        labels = [bucket_label(u, uppers[k - 1] if k else None) for k, u in enumerate(uppers)]
        est = part["estimate"].to_list()
        pos = list(range(len(est)))
        ax.bar(pos, est, color="#9ecae1", width=0.8)
        ax.errorbar(
            pos,
            est,
            yerr=[
                [e - lo for e, lo in zip(est, part["ci_low"].to_list(), strict=True)],
                [hi - e for e, hi in zip(est, part["ci_high"].to_list(), strict=True)],
            ],
            fmt="none",
            ecolor="#333",
            elinewidth=0.8,
            capsize=1.5,
        )
        ax.axhline(0.0, color="#999", linewidth=0.6)
        step = max(1, math.ceil(len(pos) / 8))
        ax.set_xticks(pos[::step], labels[::step], rotation=60, fontsize=6, ha="right")
        ax.tick_params(axis="y", labelsize=6)
        suffix = f" · ≈{events:,.0f} events" if events is not None else ""
        ax.set_title(f"{name}{suffix}", fontsize=7)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(title, fontsize="medium")
    fig.tight_layout()
    return _svg(fig)
