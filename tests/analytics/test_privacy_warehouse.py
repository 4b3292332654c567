"""The warehouse acts on deletion requests and retention, and stores totals and suppressions."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pytest

from analytics import fleet_mean, grand_totals
from schemas import (
    AppInfo,
    CounterAggregate,
    DeletionRequestV1,
    EnvelopeV1,
    IngestedDeletionRequest,
    IngestedEnvelope,
    Mechanism,
    NoiseSpec,
    Tier,
    TotalAggregate,
)
from warehouse import connect, enforce_retention, write_envelopes

T0 = datetime(2026, 3, 2, tzinfo=UTC)
HOUR = timedelta(hours=1)
NOISE = NoiseSpec(mechanism=Mechanism.LAPLACE, scale=1.0, epsilon=0.5, lower=0, upper=10)


def _envelope(device: str, window: int, received: datetime | None = None) -> IngestedEnvelope:
    start = T0 + window * HOUR
    aggregates = [
        CounterAggregate(signal="errors", tier=Tier.HEALTH, value=1.0, noise=NOISE),
        CounterAggregate(signal="prompts", tier=Tier.CONTENT, value=2.0, noise=NOISE),
        TotalAggregate(
            signal="lat", tier=Tier.PERFORMANCE, measure="count", value=4.0, noise=NOISE
        ),
        TotalAggregate(signal="lat", tier=Tier.PERFORMANCE, measure="sum", value=2.0, noise=NOISE),
    ]
    env = EnvelopeV1(
        envelope_id=uuid.uuid4(),
        device_id=device,
        sequence=window,
        sent_at=start + HOUR,
        window_start=start,
        window_end=start + HOUR,
        region="eu",
        policy_hash="ab" * 32,
        app=AppInfo(name="app", version="1"),
        aggregates=aggregates,
        consent_hash="cd" * 32,
        consented_tiers=[Tier.HEALTH, Tier.PERFORMANCE, Tier.CONTENT],
        suppressed={"tokens": 1} if window == 2 else {},
    )
    return IngestedEnvelope(
        envelope=env,
        received_at=received or start + HOUR,
        key_fingerprint="ef" * 32,
        assurance="software",
    )


def _deletion(device: str, tier: Tier, at: datetime) -> IngestedDeletionRequest:
    return IngestedDeletionRequest(
        deletion=DeletionRequestV1(
            request_id=uuid.uuid4(),
            device_id=device,
            region="eu",
            tier=tier,
            requested_at=at,
            consent_hash="00" * 32,
            consent_version=2,
        ),
        received_at=at,
        key_fingerprint="ef" * 32,
    )


@pytest.fixture
def conn(tmp_path: Path) -> duckdb.DuckDBPyConnection:
    return connect(tmp_path / "w.duckdb")


def _rows(conn: duckdb.DuckDBPyConnection, device: str, tier: Tier) -> int:
    row = conn.execute(
        "SELECT count(*) FROM released_values WHERE device_id = ? AND tier = ?",
        [device, tier.value],
    ).fetchone()
    assert row is not None
    return int(row[0])


def test_a_deletion_request_deletes_the_devices_rows_of_its_tier(conn) -> None:
    early = [_envelope("dev-a", w) for w in range(3)] + [_envelope("dev-b", 0)]
    write_envelopes(conn, early)
    deletion = _deletion("dev-a", Tier.CONTENT, T0 + 5 * HOUR)
    result = write_envelopes(conn, [deletion])
    assert result.deletions == 1
    assert _rows(conn, "dev-a", Tier.CONTENT) == 0
    assert _rows(conn, "dev-a", Tier.HEALTH) == 3  # other tiers stay
    assert _rows(conn, "dev-b", Tier.CONTENT) == 1  # other devices stay
    recorded = conn.execute("SELECT tier, rows_deleted FROM deletion_requests").fetchall()
    assert recorded == [("content", 3)]
    # Replays change nothing: the request and the envelopes are known by id.
    assert write_envelopes(conn, [deletion, *early]).deletions == 0
    assert _rows(conn, "dev-a", Tier.CONTENT) == 0


def test_a_deletion_sticks_when_an_older_envelope_arrives_after_it(conn) -> None:
    write_envelopes(conn, [_deletion("dev-a", Tier.CONTENT, T0 + 5 * HOUR)])
    late = _envelope("dev-a", 1, received=T0 + 6 * HOUR)  # window before the revocation
    later = _envelope("dev-a", 7)  # consent granted again afterwards
    write_envelopes(conn, [late, later])
    rows = conn.execute(
        "SELECT e.window_start FROM released_values r JOIN envelopes e USING (envelope_id) "
        "WHERE r.tier = 'content'"
    ).fetchall()
    assert [r[0] for r in rows] == [T0 + 7 * HOUR]


def test_retention_deletes_each_tier_after_its_days(conn) -> None:
    write_envelopes(conn, [_envelope("dev-a", 0)])
    days = {Tier.HEALTH: 30, Tier.PERFORMANCE: 10, Tier.CONTENT: 7}
    assert enforce_retention(conn, days, T0 + timedelta(days=5)) == {
        "health": 0,
        "performance": 0,
        "content": 0,
    }
    deleted = enforce_retention(conn, days, T0 + timedelta(days=8))
    assert deleted == {"health": 0, "performance": 0, "content": 1}
    assert _rows(conn, "dev-a", Tier.PERFORMANCE) == 2


def test_totals_and_suppressions_are_stored_and_queried(conn) -> None:
    write_envelopes(conn, [_envelope(f"dev-{i}", w) for i in range(3) for w in range(3)])
    totals = grand_totals(conn, "lat")
    assert totals["estimate"].to_list() == [12.0, 12.0, 12.0]
    assert totals["devices"].to_list() == [3, 3, 3]
    means = fleet_mean(conn, "lat", per_window=False)
    assert means["mean"].to_list() == [0.5]
    suppressed = conn.execute(
        "SELECT signal, sum(releases) FROM suppressions GROUP BY 1"
    ).fetchall()
    assert suppressed == [("tokens", 3)]
