"""A synthetic fleet with known truth: envelopes whose noise comes from real OpenDP draws.

Truth is drawn from a seeded numpy generator, so it is reproducible; the OpenDP noise
is not seedable, so tests that use it assert with tolerances that fail with
probability below 1e-6.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import opendp.prelude as dp

from schemas import (
    AppInfo,
    CounterAggregate,
    EnvelopeV1,
    HistogramAggregate,
    IngestedEnvelope,
    Mechanism,
    NoiseSpec,
    Tier,
)
from warehouse import connect, write_envelopes

dp.enable_features("contrib")

T0 = datetime(2025, 3, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)
POLICY_HASH = "ab" * 32


def discrete_laplace(scale: float) -> dp.Measurement:
    """Vector discrete Laplace: OpenDP's make_laplace on integers."""
    return dp.m.make_laplace(
        dp.vector_domain(dp.atom_domain(T=int)), dp.l1_distance(T=int), scale=scale
    )


def continuous_laplace(scale: float) -> dp.Measurement:
    """Vector continuous Laplace: OpenDP's make_laplace on floats."""
    return dp.m.make_laplace(
        dp.vector_domain(dp.atom_domain(T=float, nan=False)),
        dp.l1_distance(T=float),
        scale=scale,
    )


@dataclass
class FleetTruth:
    """True fleet totals: counters[(window, labels)] and hist[(window, labels)] = (n, sum)."""

    counters: dict[tuple[int, str], int] = field(default_factory=dict)
    hist: dict[tuple[int, str], tuple[int, float]] = field(default_factory=dict)


def _envelope(device: int, window: int, aggregates: list[object]) -> IngestedEnvelope:
    start = T0 + window * HOUR
    env = EnvelopeV1.model_validate(
        {
            "envelope_id": uuid.uuid4(),
            "device_id": f"dev-{device:032x}",
            "sequence": window,
            "sent_at": start + HOUR,
            "window_start": start,
            "window_end": start + HOUR,
            "region": "eu",
            "policy_hash": POLICY_HASH,
            "app": AppInfo(name="testapp", version="1.0"),
            "aggregates": aggregates,
        }
    )
    return IngestedEnvelope(
        envelope=env,
        received_at=start + HOUR,
        key_fingerprint=f"{device:064x}",
        assurance="software",
    )


def build_fleet(
    *,
    devices: int,
    windows: int,
    counter_cells: Sequence[dict[str, str]],
    hist_cells: Sequence[dict[str, str]] = (),
    count_scale: float = 8.0,
    sum_scale: float = 20.0,
    bounds: Sequence[float] = (2.0,),
    seed: int = 7,
    events: tuple[int, int] = (0, 21),
) -> tuple[list[IngestedEnvelope], FleetTruth]:
    """Envelopes for `devices` x `windows`, one counter per counter cell ('test.requests')
    and one latency histogram with a sum per hist cell ('test.latency'), each device
    recording `events[0]` to `events[1] - 1` latencies per cell and window."""
    rng = np.random.default_rng(seed)
    count_noise = discrete_laplace(count_scale)
    sum_noise = continuous_laplace(sum_scale)
    c_spec = NoiseSpec(
        mechanism=Mechanism.DISCRETE_LAPLACE, scale=count_scale, epsilon=0.25, lower=0, upper=60
    )
    s_spec = NoiseSpec(
        mechanism=Mechanism.LAPLACE, scale=sum_scale, epsilon=0.25, lower=0.0, upper=600.0
    )
    truth = FleetTruth()
    items: list[IngestedEnvelope] = []
    edges = np.asarray(bounds)
    for w in range(windows):
        for d in range(devices):
            true_counts = rng.integers(0, 21, size=len(counter_cells))
            hist_true: list[tuple[list[int], float]] = []
            for _ in hist_cells:
                lat = rng.uniform(0.0, 10.0, size=int(rng.integers(*events)))
                buckets = np.bincount(np.searchsorted(edges, lat), minlength=len(bounds) + 1)
                hist_true.append(([int(b) for b in buckets], float(lat.sum())))
            noisy_c = count_noise([int(c) for c in true_counts]) if counter_cells else []
            flat = [b for counts, _ in hist_true for b in counts]
            noisy_b = count_noise(flat) if flat else []
            noisy_s = sum_noise([s for _, s in hist_true]) if hist_true else []
            aggs: list[object] = []
            for i, labels in enumerate(counter_cells):
                key = (w, _key(labels))
                truth.counters[key] = truth.counters.get(key, 0) + int(true_counts[i])
                aggs.append(
                    CounterAggregate(
                        signal="test.requests",
                        tier=Tier.PERFORMANCE,
                        attributes=labels,
                        value=float(noisy_c[i]),
                        noise=c_spec,
                    )
                )
            nb = len(bounds) + 1
            for j, labels in enumerate(hist_cells):
                counts, total = hist_true[j]
                key = (w, _key(labels))
                n0, s0 = truth.hist.get(key, (0, 0.0))
                truth.hist[key] = (n0 + sum(counts), s0 + total)
                aggs.append(
                    HistogramAggregate(
                        signal="test.latency",
                        tier=Tier.PERFORMANCE,
                        unit="s",
                        attributes=labels,
                        bounds=list(bounds),
                        counts=[float(x) for x in noisy_b[j * nb : (j + 1) * nb]],
                        count_noise=c_spec,
                        sum=float(noisy_s[j]),
                        sum_noise=s_spec,
                    )
                )
            items.append(_envelope(d, w, aggs))
    return items, truth


def _key(labels: dict[str, str]) -> str:
    import json

    return json.dumps(labels, sort_keys=True, separators=(",", ":"))


CLI_CELLS = [{"route": r, "model": m} for r in ("local", "cloud") for m in ("m1", "m2")]
"""The label sets of the CLI tests' small fleet (`write_cli_fleet`)."""


def write_cli_fleet(path: Path) -> Path:
    """A warehouse file at `path` holding a small fleet (30 devices, 2 windows, every
    `CLI_CELLS` cell of a counter and a histogram): what the CLI tests read.

    20 to 40 latencies per device, cell and window: a cell's noisy event count over the
    range (1,500 to 2,100, noise sd 124) is then far from where its mean's 95% interval is
    unbounded (below 243). With 0 to 20 (about 600) a run in a hundred or so drew a
    count low enough for a null interval, and `test_means_carry_intervals` failed."""
    items, _ = build_fleet(
        devices=30, windows=2, counter_cells=CLI_CELLS, hist_cells=CLI_CELLS, events=(20, 41)
    )
    conn = connect(path)
    write_envelopes(conn, items)
    conn.close()
    return path
