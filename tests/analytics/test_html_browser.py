"""The HTML report rendered in a real browser (Debian's headless Chromium): every
section is there, every plot draws data, nothing is fetched from the network."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pytest

from analytics import build_report, render_html
from auditlog import AuditLog, AuditRecord
from policies import load_policy
from tests.analytics._aggregates import (
    AggregateTruth,
    counter_batch,
    histogram_batches,
    insert_batches,
)
from tests.analytics._fleet import build_fleet
from tests.harness.browser import chromium_path, inspect_page
from warehouse import apply_schema, write_envelopes

pytestmark = pytest.mark.skipif(
    chromium_path() is None, reason="chromium not installed (make test installs it)"
)

_MODELS = ("qwen2.5-7b@1.0", "qwen2.5-7b@1.1")
_CELLS = [{"route": r, "model": m} for r in ("local", "edge", "cloud") for m in _MODELS]
# The canary is 30% slower on the local route.
_MEANS = [1.3 if c == {"route": "local", "model": _MODELS[1]} else 1.0 for c in _CELLS]
SECTIONS = {"basis", "drift", "canary", "cost", "audit", "summary"}


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("html")
    conn = duckdb.connect()
    apply_schema(conn)
    rng = np.random.default_rng(5)
    batches = []
    for window in range(2):
        batches.append(
            counter_batch("inference.requests", window, _CELLS, rng, scale=40.0, reports=3000)
        )
        batches += histogram_batches(
            "gen_ai.client.operation.duration",
            window,
            _CELLS,
            rng,
            mean=_MEANS,
            events=(20_000, 30_000),
            reports=3000,
        )
    insert_batches(conn, batches, AggregateTruth())
    items, _ = build_fleet(devices=30, windows=1, counter_cells=[{"cell": "a"}, {"cell": "b"}])
    write_envelopes(conn, items)
    audit = AuditLog(tmp / "audit.sqlite3")
    audit.append(AuditRecord(action="enroll", decision="accepted", device_id="dev-1"))
    audit.append(AuditRecord(action="envelope", decision="accepted", device_id="dev-1"))
    try:
        report = build_report(conn, source="test", policy=load_policy(), audit=audit)
    finally:
        audit.close()
        conn.close()
    return render_html(report, tmp / "report.html")


def test_every_section_renders_and_every_plot_has_data(page: Path, tmp_path: Path) -> None:
    view = inspect_page(page, tmp_path)
    assert view.sections >= SECTIONS
    assert view.external == ()
    assert view.plots, "no plot rendered"
    for plot in view.plots:
        assert plot.marks > 0, f"an empty chart in section {plot.section}"
        assert plot.width > 50
        assert plot.height > 50
    drawn = {p.section for p in view.plots}
    # Fleet figures (before the first named section), drift with its noise bands, and
    # cost all have data in this warehouse.
    assert {"drift", "cost"} <= drawn


def test_the_page_says_verdicts_and_chain_status(page: Path) -> None:
    text = page.read_text()
    assert "Canary verdict" in text
    assert "Overall: <b>" in text
    assert "chain verifies (2 entries" in text
    assert "after contribution bounds" in text
