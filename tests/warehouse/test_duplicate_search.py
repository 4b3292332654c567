"""The sink's search for copies of a batch's envelopes: bounded by nearby windows."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from schemas import EnvelopeV1, IngestedEnvelope
from tests.ingest.kit import WINDOW, Device, ingested
from warehouse import connect, write_envelopes
from warehouse._write import _window_clusters


def _at(device: Device, start: datetime) -> IngestedEnvelope:
    env = device.envelope(
        window_start=start.isoformat(),
        window_end=(start + WINDOW).isoformat(),
        sent_at=(start + WINDOW).isoformat(),
    )
    envelope = EnvelopeV1.model_validate_json(json.dumps(env))
    return IngestedEnvelope(
        envelope=envelope,
        received_at=envelope.window_end + timedelta(seconds=10),
        key_fingerprint="ab" * 32,
        assurance="software",
    )


def test_an_old_window_is_searched_apart_from_the_recent_ones() -> None:
    recent = datetime(2026, 11, 28, tzinfo=UTC)
    items = [
        _at(Device(), recent),
        _at(Device(), datetime(1, 1, 2, tzinfo=UTC)),
        _at(Device(), recent + WINDOW),
        _at(Device(), recent - 3 * WINDOW),
    ]
    clusters = _window_clusters(items, ["a", "b", "c", "d"])
    assert [(lo.year, ids) for lo, _, ids in clusters] == [
        (1, ["b"]),
        (2026, ["d"]),
        (2026, ["a", "c"]),
    ]
    assert clusters[2][:2] == (recent, recent + WINDOW)


def test_copies_are_found_in_every_cluster(tmp_path: Path) -> None:
    conn = connect(tmp_path / "wh.duckdb")
    batch = [
        _at(Device(), datetime(2026, 11, 28, tzinfo=UTC)),
        _at(Device(), datetime(1, 1, 2, tzinfo=UTC)),
        ingested(Device()),
    ]
    assert write_envelopes(conn, batch).inserted == 3
    again = write_envelopes(conn, [*batch, ingested(Device())])
    assert (again.inserted, again.duplicates) == (1, 3)
    conn.close()


def test_windows_scattered_over_years_cost_a_bounded_number_of_searches(tmp_path: Path) -> None:
    # Review s18b: one search per cluster, 197 clusters, took 240 ms at 400k envelopes.
    start = datetime(2000, 1, 1, tzinfo=UTC)
    batch = [_at(Device(), start + timedelta(days=10 * k)) for k in range(40)]
    clusters = _window_clusters(batch, [str(k) for k in range(40)])
    assert len(clusters) == 8
    assert sorted(i for _, _, ids in clusters for i in ids) == sorted(str(k) for k in range(40))
    conn = connect(tmp_path / "wh.duckdb")
    assert write_envelopes(conn, batch).inserted == 40
    assert write_envelopes(conn, batch).duplicates == 40
    conn.close()
