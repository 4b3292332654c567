"""A warehouse file of millions of per-device rows, for the analytics benchmark.

Template devices release one day each through the client's own release path
(`release_counter` / `release_histogram`, OpenDP noise, the pilot policy's local model),
and the sink's write path (`warehouse.write_envelopes`) stores them. DuckDB then copies
the template into `copies` more device-days (new device and envelope ids, a day offset,
values moved by a few noise scales), so the file holds the rows a fleet of
`templates * (copies + 1)` device-days would: the same cells, kinds, noise
specifications and value ranges, at a fraction of the cost of running the client for
each.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from client._aggregation import HistogramSnapshot
from client._domain import CellDomain
from client._release import release_counter, release_histogram
from policies import PILOT_POLICY_PATH, CounterSignal, HistogramSignal, Policy, load_policy
from schemas import AppInfo, EnvelopeV1, IngestedEnvelope, Mechanism
from warehouse import connect, write_envelopes

__all__ = ["DAY0", "MODELS", "fill_warehouse"]

DAY0 = datetime(2026, 11, 2, tzinfo=UTC)
DAY = timedelta(days=1)
MODELS = ("qwen2.5-7b@1.0", "qwen2.5-7b@1.1")
_REGIONS = ("eu", "us")


def _raw_counter(signal: CounterSignal, domain: CellDomain, rng: np.random.Generator) -> list[int]:
    # Declared cells get Poisson usage; `other` cells (the last value of a label) get none.
    return [int(x) for x in rng.poisson(max(1.0, signal.max_per_window / 40), size=domain.size)]


def _raw_histogram(
    signal: HistogramSignal, domain: CellDomain, rng: np.random.Generator, slow: float
) -> list[HistogramSnapshot]:
    lo, hi = signal.value_range
    edges = np.asarray(signal.buckets)
    cells = []
    for _ in range(domain.size):
        n = int(rng.poisson(6))
        values = np.clip(rng.lognormal(np.log(0.4 * slow * (hi - lo) / 60), 0.8, n), lo, hi)
        counts = np.bincount(np.searchsorted(edges, values), minlength=len(edges) + 1)
        cells.append(HistogramSnapshot([int(c) for c in counts], float(values.sum())))
    return cells


def _template_envelope(
    policy: Policy, policy_hash: str, device: int, rng: np.random.Generator
) -> IngestedEnvelope:
    slow = 1.2 if device % 4 == 0 else 1.0  # a quarter of devices (the canary) is slower
    aggregates: list[object] = []
    mech = policy.privacy.mechanisms
    for name, signal in policy.signals.items():
        domain = CellDomain(signal.attributes)
        if isinstance(signal, CounterSignal):
            release = release_counter(
                name, signal, domain, _raw_counter(signal, domain, rng), mech.counter
            )
        else:
            release = release_histogram(
                name,
                signal,
                domain,
                _raw_histogram(signal, domain, rng, slow),
                mech.histogram_counts,
                Mechanism.LAPLACE,
            )
        aggregates.extend(release.aggregates)
    env = EnvelopeV1.model_validate(
        {
            "envelope_id": uuid.uuid4(),
            "device_id": f"bench-{device:08d}",
            "sequence": 1,
            "sent_at": DAY0 + DAY,
            "window_start": DAY0,
            "window_end": DAY0 + DAY,
            "region": _REGIONS[device % len(_REGIONS)],
            "policy_hash": policy_hash,
            "app": AppInfo(name="bench", version="1.0"),
            "aggregates": aggregates,
        }
    )
    return IngestedEnvelope(
        envelope=env,
        received_at=DAY0 + DAY,
        key_fingerprint=f"{device:064x}",
        assurance="software" if device % 3 else "tpm",
    )


def fill_warehouse(path: Path, *, templates: int, rows: int, days: int, seed: int = 11) -> int:
    """Write about `rows` per-device rows into a new warehouse at `path`: `templates`
    device-days released through the client, copied as often as it takes, spread over
    `days` days; returns the number of `released_values` rows."""
    policy = load_policy(PILOT_POLICY_PATH)
    rng = np.random.default_rng(seed)
    items = [_template_envelope(policy, policy.content_hash, d, rng) for d in range(templates)]
    conn = connect(path)
    try:
        write_envelopes(conn, items)
        conn.execute("CREATE TEMP TABLE t_values AS SELECT * FROM released_values")
        ((per_copy,),) = conn.execute("SELECT count(*) FROM t_values").fetchall()
        copies = max(0, round(rows / max(per_copy, 1)) - 1)
        conn.execute("CREATE TEMP TABLE t_envelopes AS SELECT * FROM envelopes")
        # One copy per (template, c): a new device id, envelope id and day; each value
        # moved by up to two noise scales so copies are not identical.
        conn.execute(
            """
            INSERT INTO envelopes
            SELECT md5(e.envelope_id::VARCHAR || c.c)::UUID, e.device_id || '-' || c.c,
                   e.sequence, e.region, e.policy_hash, e.app_name, e.app_version,
                   e.window_start + to_days((c.c % ?)::INTEGER),
                   e.window_end + to_days((c.c % ?)::INTEGER),
                   e.sent_at, e.received_at, e.assurance, e.key_fingerprint
            FROM t_envelopes e, range(1, ? + 1) c(c)
            """,
            [days, days, copies],
        )
        conn.execute(
            """
            INSERT INTO released_values
            SELECT md5(v.envelope_id::VARCHAR || c.c)::UUID, v.device_id || '-' || c.c,
                   v.region,
                   v.window_start + to_days((c.c % ?)::INTEGER),
                   v.window_end + to_days((c.c % ?)::INTEGER),
                   v.signal, v.tier, v.unit, v.kind, v.attributes, v.bucket_index,
                   v.bucket_upper,
                   CASE WHEN v.mechanism = 'laplace'
                        THEN v.value + v.scale * (4 * random() - 2)
                        ELSE v.value + round(v.scale * (4 * random() - 2)) END,
                   v.mechanism, v.scale, v.epsilon, v.rho, v.lower_bound, v.upper_bound
            FROM t_values v, range(1, ? + 1) c(c)
            """,
            [days, days, copies],
        )
        conn.execute("CHECKPOINT")
        row = conn.execute("SELECT count(*) FROM released_values").fetchone()
        return int(row[0]) if row else 0
    finally:
        conn.close()
