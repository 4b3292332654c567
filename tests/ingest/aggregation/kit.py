"""Test kit for secure aggregation: a small policy, devices' reports straight into the
warehouse (as the ingest would hand them to the sink), and noise-free aggregators.

Reports are built by the real client code (`client._shares.ReportSharer`), so the
helper opens what a device seals.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from nacl.public import PrivateKey

from client._shares import ReportSharer, task_vdaf
from ingest import DuckDBSink
from ingest.aggregation import NoiseDraw
from policies import AggregationTask, Policy, aggregation_tasks, task_context
from schemas import (
    REPORT_ID_BYTES,
    AppInfo,
    EnvelopeV1,
    IngestedEnvelope,
    PrioReport,
)

__all__ = [
    "BATCH",
    "REGION",
    "VERIFY_KEY",
    "WINDOW",
    "Fleet",
    "ZeroNoise",
    "encode_l1",
    "forged_report",
    "small_policy",
]

REGION = "eu"
WINDOW = 3600
BATCH = datetime(2025, 3, 1, 10, tzinfo=UTC)
VERIFY_KEY = bytes(range(32))


class ZeroNoise:
    """No noise at all: exact sums. Test-only; nothing in production can build it."""

    def __init__(self) -> None:
        self.draws = 0

    def draw(self, task: AggregationTask) -> NoiseDraw:
        self.draws += 1
        return NoiseDraw((0,) * task.length, 0.0)


def _encode_entry(value: int, bits: int) -> list[int]:
    """Prio3L1BoundSum's encoding of one entry: bits-1 bits (LSB first), then a flag worth
    2**(bits-1). Values over the bound are encoded anyway: what a forger would send."""
    last_weight = 1 << (bits - 1)
    high = int(value > last_weight - 1)
    rest = value - high * last_weight
    return [(rest >> i) & 1 for i in range(bits - 1)] + [high]


def encode_l1(entries: Sequence[int], bits: int, norm: int | None = None) -> list[int]:
    """The encoded input of an L1BoundSum report: every entry, then the claimed norm
    (default: their true sum). No range checks."""
    claimed = sum(entries) if norm is None else norm
    return [e for v in [*entries, claimed] for e in _encode_entry(v, bits)]


def forged_report(
    policy: Policy, helper_key: PrivateKey, task: AggregationTask, encoded: Sequence[int]
) -> PrioReport:
    """A report of a raw encoding, sharded without range checks, sealed like a device's."""
    report_id = uuid.uuid4().bytes[:REPORT_ID_BYTES]
    vdaf = task_vdaf(task)
    ctx = task_context(policy.content_hash, task.id)
    shares = vdaf.shard_unchecked_for_tests(ctx, list(encoded), report_id)
    sharer = ReportSharer(policy.content_hash, bytes(helper_key.public_key))
    return sharer.wrap(task, report_id, shares, BATCH)


def small_policy(helper_key: PrivateKey, *, min_batch_size: int = 4) -> Policy:
    """A two-signal policy (a counter and a histogram), hourly windows, tiny batches."""
    return Policy.model_validate(
        {
            "version": 1,
            "window_seconds": WINDOW,
            "signals": {
                "inference.requests": {
                    "kind": "counter",
                    "tier": "performance",
                    "unit": "{request}",
                    "attributes": {"route": ["local", "cloud"]},
                    "max_per_window": 15,
                    "epsilon": 1.0,
                },
                "latency": {
                    "kind": "histogram",
                    "tier": "performance",
                    "unit": "s",
                    "attributes": {"route": ["local"]},
                    "buckets": [0.1, 1.0],
                    "max_events_per_window": 7,
                    "value_range": [0.0, 10.0],
                    "max_sum_per_window": 15.0,
                    "epsilon": 1.5,
                },
            },
            "aggregation": {
                "min_batch_size": min_batch_size,
                "sum_bits": 4,
                "helper": {
                    "url": "http://127.0.0.1:1",
                    "public_key": base64.b64encode(bytes(helper_key.public_key)).decode(),
                },
            },
        }
    )


@dataclass
class Fleet:
    """Simulated devices whose reports land in the warehouse as the sink stores them."""

    policy: Policy
    helper_key: PrivateKey
    sink: DuckDBSink
    sent: list[IngestedEnvelope] = field(default_factory=list)

    @property
    def tasks(self) -> dict[str, AggregationTask]:
        return aggregation_tasks(self.policy)

    def reports(
        self, measurements: Mapping[str, Sequence[int]], batch: datetime = BATCH
    ) -> list[PrioReport]:
        sharer = ReportSharer(self.policy.content_hash, bytes(self.helper_key.public_key))
        return [sharer.report(self.tasks[t], m, batch) for t, m in measurements.items()]

    def envelope(
        self,
        reports: Sequence[PrioReport],
        *,
        device_id: str | None = None,
        batch: datetime = BATCH,
    ) -> IngestedEnvelope:
        end = batch + timedelta(seconds=self.policy.window_seconds)
        env = EnvelopeV1(
            envelope_id=uuid.uuid4(),
            device_id=device_id or f"dev-{uuid.uuid4().hex[:12]}",
            sequence=1,
            sent_at=end,
            window_start=batch,
            window_end=end,
            region=REGION,
            policy_hash=self.policy.content_hash,
            app=AppInfo(name="test-app", version="1"),
            aggregates=[],
            reports=list(reports),
        )
        return IngestedEnvelope(
            envelope=env,
            received_at=end,
            key_fingerprint="ab" * 32,
            assurance="software",
            batch_start=batch,
        )

    def send(
        self, measurements: Mapping[str, Sequence[int]], batch: datetime = BATCH
    ) -> IngestedEnvelope:
        """One device's window: its reports, stored by the sink."""
        item = self.envelope(self.reports(measurements, batch), batch=batch)
        self.store([item])
        return item

    def store(self, items: Sequence[IngestedEnvelope]) -> None:
        self.sink.write(items)
        self.sent.extend(items)

    def statuses(self) -> dict[str, int]:
        rows = self.sink.connection.execute(
            "SELECT coalesce(reason, status), count(*) FROM prio_reports GROUP BY ALL"
        ).fetchall()
        return {str(k): int(n) for k, n in rows}
