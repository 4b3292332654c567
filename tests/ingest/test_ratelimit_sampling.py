"""Sampled audit entries for unauthenticated decisions: the first of a kind per source
and interval is written, repeats are summed into one entry; the table is bounded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from auditlog import AuditLog, AuditRecord
from ingest._audit_sampling import OVERFLOW_SOURCE, SampledAudit, SampleKey, SamplingTable

REFUSED = AuditRecord("enroll", "rejected", "tpm-x", "unknown_ek_root", "not our vendor")


def _key(source: str, device: str | None = "tpm-x") -> SampleKey:
    return SampleKey(source, "enroll", "rejected", "unknown_ek_root", device)


def test_the_first_of_a_kind_is_written_and_repeats_are_summarized() -> None:
    table = SamplingTable(interval=60.0, max_keys=10)
    decisions = [table.observe(_key("a"), t)[0] for t in (0.0, 1.0, 2.0, 3.0)]
    other = table.observe(_key("b"), 4.0)[0]
    write, summaries = table.observe(_key("a"), 61.0)  # a new interval

    assert decisions == [True, False, False, False]
    assert other
    assert write  # the first of the new interval
    assert [(s.key.source, s.count, s.first_at, s.last_at) for s in summaries] == [
        ("a", 3, 1.0, 3.0)
    ]


def test_past_max_keys_decisions_are_counted_under_the_overflow_source() -> None:
    table = SamplingTable(interval=60.0, max_keys=3)
    writes = [table.observe(_key(f"10.0.0.{i}", f"tpm-{i}"), 1.0)[0] for i in range(100)]
    summaries = table.close(2.0)

    assert sum(writes) == 4  # three sources, and the overflow key's first
    assert len(table) == 0
    (overflow,) = summaries
    assert (overflow.key.source, overflow.key.device_id, overflow.count) == (
        OVERFLOW_SOURCE,
        None,
        96,
    )


def test_a_flood_adds_a_bounded_number_of_entries_that_count_it(tmp_path: Path) -> None:
    clock = iter(float(t) for t in range(10_000)).__next__
    log = AuditLog(tmp_path / "audit.sqlite3")
    sampled = SampledAudit(log, interval=500.0, max_keys=8, clock=clock)
    for i in range(1000):
        sampled.append(f"198.51.100.{i % 20}", REFUSED)
    sampled.flush(force=True)
    entries = log.entries()
    log.close()

    written = [e for e in entries if e.detail == "not our vendor"]
    summaries = [json.loads(e.detail or "") for e in entries if e.detail != "not our vendor"]
    # two intervals (1000 ticks of 1 s, 500 s each): per interval 8 sources + the
    # overflow key written once, and one summary per key that repeated
    assert len(entries) <= 2 * (2 * 9)
    assert len(written) + sum(s["repeated"] for s in summaries) == 1000
    assert all(e.reason == "unknown_ek_root" for e in entries)
    assert {s["source"] for s in summaries} >= {OVERFLOW_SOURCE, "198.51.100.0"}


def test_flush_writes_nothing_before_the_interval_ends(tmp_path: Path) -> None:
    now = [0.0]
    log = AuditLog(tmp_path / "audit.sqlite3")
    sampled = SampledAudit(log, interval=60.0, clock=lambda: now[0])
    sampled.append("a", REFUSED)
    sampled.append("a", REFUSED)
    early = sampled.flush()
    now[0] = 60.0
    due = sampled.flush()
    log.close()
    assert (early, due) == (0, 1)


def test_nonsense_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="interval must be positive"):
        SamplingTable(interval=0.0, max_keys=1)
