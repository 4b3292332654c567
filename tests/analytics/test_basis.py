"""What the figures rest on: devices by key anchoring, releases withheld, coverage."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pytest

from analytics import build_report, render_html, render_json
from analytics._basis import COVERAGE_STATEMENT, fleet_basis
from schemas import (
    AppInfo,
    CounterAggregate,
    EnvelopeV1,
    IngestedEnvelope,
    Mechanism,
    NoiseSpec,
    Tier,
)
from warehouse import connect, write_envelopes

T0 = datetime(2026, 5, 4, tzinfo=UTC)
DAY = timedelta(days=1)
NOISE = NoiseSpec(mechanism=Mechanism.DISCRETE_LAPLACE, scale=4.0, epsilon=0.5, lower=0, upper=15)


def _item(device: int, day: int, *, tpm: bool, suppressed: dict[str, int]) -> IngestedEnvelope:
    start = T0 + day * DAY
    aggregates = (
        []
        if suppressed
        else [
            CounterAggregate(
                signal="app.crashes",
                tier=Tier.HEALTH,
                attributes={},
                value=2.0,
                noise=NOISE,
            )
        ]
    )
    env = EnvelopeV1.model_validate(
        {
            "envelope_id": uuid.uuid4(),
            "device_id": f"dev-{device:04d}",
            "sequence": day + 1,
            "sent_at": start + DAY,
            "window_start": start,
            "window_end": start + DAY,
            "region": "eu",
            "policy_hash": "ab" * 32,
            "app": AppInfo(name="t", version="1"),
            "aggregates": aggregates,
            "suppressed": suppressed,
        }
    )
    return IngestedEnvelope(
        envelope=env,
        received_at=start + DAY,
        key_fingerprint=f"{device:064x}",
        assurance="tpm" if tpm else "software",
    )


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    c = connect(tmp_path / "w.duckdb")
    items = [_item(d, 0, tpm=d < 3, suppressed={}) for d in range(10)]
    # Day 1: devices 0-7 release; 8 and 9 had spent their budget and withheld two signals.
    items += [_item(d, 1, tpm=d < 3, suppressed={}) for d in range(8)]
    items += [
        _item(d, 1, tpm=False, suppressed={"app.crashes": 1, "inference.requests": 2})
        for d in (8, 9)
    ]
    write_envelopes(c, items)
    yield c
    c.close()


def test_devices_by_key_anchoring_per_window(conn: duckdb.DuckDBPyConnection) -> None:
    basis = fleet_basis(conn)
    assert basis.devices.select("devices", "attested", "software").rows() == [
        (10, 3, 7),
        (10, 3, 7),
    ]


def test_suppressed_releases_are_counted_per_signal(conn: duckdb.DuckDBPyConnection) -> None:
    basis = fleet_basis(conn)
    assert basis.suppressed.rows() == [("app.crashes", 2, 2, 1), ("inference.requests", 4, 2, 1)]
    assert basis.suppressed_total == 6
    assert fleet_basis(conn, signal="app.crashes").suppressed_total == 2
    assert fleet_basis(conn, until=T0 + DAY).suppressed_total == 0


def test_report_shows_basis_in_json_and_html(
    conn: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    report = build_report(conn, source="t")
    doc = json.loads(render_json(report))
    assert doc["coverage"] == COVERAGE_STATEMENT
    assert doc["basis"]["suppressed_total"] == 6
    assert {r["signal"]: r["releases"] for r in doc["basis"]["suppressed"]} == {
        "app.crashes": 2,
        "inference.requests": 4,
    }
    assert [r["attested"] for r in doc["basis"]["devices"]] == [3, 3]
    page = render_html(report, tmp_path / "r.html").read_text()
    assert "What the figures rest on" in page
    assert "Releases withheld" in page
    assert "after contribution bounds" in page
