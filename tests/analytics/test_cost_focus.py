"""The FOCUS export: its columns and types, the meters it splits a cell into, and CSV and
Parquet files that read back to the same frame."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest

from analytics._cost import price_cells
from analytics._cost_focus import (
    FOCUS_COLUMNS,
    FOCUS_SCHEMA,
    SERVICE_CATEGORY,
    focus_rows,
    read_focus,
    write_focus,
)
from analytics._errors import InvalidQueryError
from tests.analytics._cost_fleet import COST, MODEL, hand_measured

# FOCUS's columns this export promises (the list), besides the x_ columns.
_REQUIRED = {
    "BilledCost",
    "EffectiveCost",
    "ListCost",
    "ConsumedQuantity",
    "ConsumedUnit",
    "PricingUnit",
    "ServiceName",
    "ServiceCategory",
    "RegionId",
    "ChargePeriodStart",
    "ChargePeriodEnd",
}
# FOCUS 1.x ServiceCategory allowed values.
_ALLOWED_CATEGORIES = {
    "AI and Machine Learning",
    "Analytics",
    "Business Applications",
    "Compute",
    "Databases",
    "Developer Tools",
    "Multicloud",
    "Identity",
    "Integration",
    "Internet of Things",
    "Management and Governance",
    "Media",
    "Migration",
    "Mobile",
    "Networking",
    "Security",
    "Storage",
    "Web",
    "Other",
}


@pytest.fixture
def rows() -> pl.DataFrame:
    return focus_rows(price_cells(COST, *hand_measured(), 0.95), COST)


def test_columns_follow_focus_and_extensions_are_prefixed(rows: pl.DataFrame) -> None:
    assert set(rows.columns) >= _REQUIRED
    assert tuple(rows.columns) == FOCUS_COLUMNS
    assert dict(rows.schema) == FOCUS_SCHEMA
    defined = _REQUIRED | {
        "ListUnitPrice",
        "BillingCurrency",
        "ChargeCategory",
        "ChargeDescription",
        "PricingQuantity",
    }
    # A column FOCUS does not define starts with x_ (its rule for custom columns).
    assert {n for n in rows.columns if not n.startswith("x_")} == defined
    assert {"x_Route", "x_ModelVersion", "x_CostLow", "x_CostHigh"} <= set(rows.columns)
    for money in ("BilledCost", "EffectiveCost", "ListCost", "ConsumedQuantity"):
        assert isinstance(rows.schema[money], pl.Decimal)
        assert rows[money].null_count() == 0
    assert rows.schema["ChargePeriodStart"] == pl.Datetime("us", "UTC")
    assert set(rows["ServiceCategory"]) == {SERVICE_CATEGORY}
    assert SERVICE_CATEGORY in _ALLOWED_CATEGORIES
    assert set(rows["ChargeCategory"]) == {"Usage"}
    assert set(rows["BillingCurrency"]) == {"EUR"}


def test_cloud_splits_into_input_and_output_tokens(rows: pl.DataFrame) -> None:
    cloud = rows.filter(pl.col("x_Route") == "cloud").sort("x_TokenType")
    assert cloud["x_TokenType"].to_list() == ["input", "output"]
    assert set(cloud["x_ModelVersion"]) == {MODEL}
    # 1,000 requests x 300 tokens, 60% input at 0.5 and 40% output at 1.5 per 1,000.
    assert cloud["ConsumedQuantity"].to_list() == [Decimal("180000"), Decimal("120000")]
    assert cloud["PricingQuantity"].to_list() == [Decimal("180"), Decimal("120")]
    assert cloud["ListUnitPrice"].to_list() == [Decimal("0.5"), Decimal("1.5")]
    assert cloud["BilledCost"].to_list() == [Decimal("90"), Decimal("180")]
    assert set(cloud["PricingUnit"]) == {"1000 Tokens"}
    assert set(cloud["ConsumedUnit"]) == {"Tokens"}
    # The meters add up to the cell's cost, and so do their bounds.
    assert float(cloud["BilledCost"].sum()) == pytest.approx(0.9 * 300.0)
    assert float(cloud["x_CostLow"].sum()) == pytest.approx(0.9 / 1000 * 950.0 * 288.0)
    assert (cloud["x_CostLow"] <= cloud["BilledCost"]).all()
    assert (cloud["BilledCost"] <= cloud["x_CostHigh"]).all()
    assert set(cloud["x_IntervalMethod"]) == {"bonferroni"}
    assert set(cloud["x_ConfidenceLevel"]) == {0.95}


def test_edge_and_local_are_one_meter_each(rows: pl.DataFrame) -> None:
    edge = rows.filter(pl.col("x_Route") == "edge").row(0, named=True)
    assert edge["ConsumedUnit"] == edge["PricingUnit"] == "GPU-Seconds"
    assert edge["ConsumedQuantity"] == Decimal("400")  # 2,000 x 0.4 s x 0.5
    assert edge["ServiceName"] == "Quietwire edge inference"
    assert edge["x_TokenType"] is None
    local = rows.filter(pl.col("x_Route") == "local").row(0, named=True)
    assert local["ConsumedUnit"] == "kWh"
    assert local["ConsumedQuantity"] == Decimal("6")  # 3,000 x 2 Wh
    assert local["BilledCost"] == Decimal("1.5")  # 6 kWh at 0.25


def test_unpriced_cells_are_left_out(rows: pl.DataFrame) -> None:
    assert set(rows["x_Route"]) == {"cloud", "edge", "local"}
    assert "other" not in set(rows["x_ModelVersion"])
    assert rows.height == 4


def test_charge_period_is_the_cells_day(rows: pl.DataFrame) -> None:
    assert set(rows["ChargePeriodStart"]) == {datetime(2026, 3, 2, tzinfo=UTC)}
    assert set(rows["ChargePeriodEnd"]) == {datetime(2026, 3, 3, tzinfo=UTC)}


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_files_round_trip(rows: pl.DataFrame, tmp_path: Path, suffix: str) -> None:
    path = write_focus(rows, tmp_path / f"focus{suffix}")
    back = read_focus(path)
    assert dict(back.schema) == FOCUS_SCHEMA
    assert back.equals(rows)


def test_csv_times_are_iso_8601_utc(rows: pl.DataFrame, tmp_path: Path) -> None:
    text = write_focus(rows, tmp_path / "focus.csv").read_text(encoding="utf-8")
    header, first = text.splitlines()[:2]
    assert header.split(",")[:3] == ["BilledCost", "EffectiveCost", "ListCost"]
    assert "2026-03-02T00:00:00Z" in first
    assert "2026-03-03T00:00:00Z" in first


def test_an_unknown_suffix_is_refused(rows: pl.DataFrame, tmp_path: Path) -> None:
    with pytest.raises(InvalidQueryError, match=r"a FOCUS export is \.csv or \.parquet"):
        write_focus(rows, tmp_path / "focus.xlsx")
