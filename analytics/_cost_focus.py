"""The cost breakdown as FOCUS rows (FinOps Open Cost and Usage Specification), to CSV or
Parquet, and back.

One row per charge period, region, route, model version and meter: the cloud route's
tokens become two rows, input and output tokens, each at its own list price (the split
is the cost model's `input_token_share`, an assumption: the telemetry does not measure
it); edge bills GPU-Seconds, local kWh. Every row is a Usage charge of ServiceCategory
"AI and Machine Learning" (one of FOCUS's allowed values).

The figures are estimates from differentially private telemetry priced at the policy's
list prices, not an invoice: BilledCost, EffectiveCost and ListCost are the same
estimate (no discounts or commitments are modelled), and the `x_` columns carry what
FOCUS has no column for: the route and model version, the interval of the cost and of
the consumed quantity at `x_ConfidenceLevel`, its method, and the noise's standard
error. A cell whose cost is not estimable (a count that may be zero) or that has no
price is left out: FOCUS costs must not be null. A negative point estimate (noise on a
near-empty cell) is exported as 0, since FOCUS quantities are non-negative; its
interval keeps its bounds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import polars as pl

from analytics._errors import InvalidQueryError
from policies import CostPolicy

__all__ = [
    "FOCUS_COLUMNS",
    "FOCUS_SCHEMA",
    "SERVICE_CATEGORY",
    "focus_rows",
    "read_focus",
    "write_focus",
]

SERVICE_CATEGORY = "AI and Machine Learning"
_MONEY = pl.Decimal(38, 12)
_TIME = pl.Datetime("us", "UTC")
_CSV_TIME = "%Y-%m-%dT%H:%M:%SZ"

FOCUS_SCHEMA: dict[str, Any] = {
    "BilledCost": _MONEY,
    "EffectiveCost": _MONEY,
    "ListCost": _MONEY,
    "ListUnitPrice": _MONEY,
    "BillingCurrency": pl.String,
    "ChargeCategory": pl.String,
    "ChargeDescription": pl.String,
    "ChargePeriodStart": _TIME,
    "ChargePeriodEnd": _TIME,
    "ConsumedQuantity": _MONEY,
    "ConsumedUnit": pl.String,
    "PricingQuantity": _MONEY,
    "PricingUnit": pl.String,
    "RegionId": pl.String,
    "ServiceCategory": pl.String,
    "ServiceName": pl.String,
    "x_Route": pl.String,
    "x_ModelVersion": pl.String,
    "x_TokenType": pl.String,
    "x_Requests": pl.Float64,
    "x_CostLow": _MONEY,
    "x_CostHigh": _MONEY,
    "x_CostStdError": pl.Float64,
    "x_ConsumedQuantityLow": _MONEY,
    "x_ConsumedQuantityHigh": _MONEY,
    "x_ConfidenceLevel": pl.Float64,
    "x_IntervalMethod": pl.String,
    "x_PrivacyModel": pl.String,
}
FOCUS_COLUMNS = tuple(FOCUS_SCHEMA)

_SERVICE = {
    "cloud": "Quietwire cloud inference",
    "edge": "Quietwire edge inference",
    "local": "Quietwire local inference",
}
_BLOCK = {"1000 Tokens": 1000.0}


def _meters(cost: CostPolicy, row: dict[str, Any]) -> list[tuple[str | None, float, float]]:
    """(token type, share of the cell's use, list price per pricing unit) per meter."""
    if row["route"] != "cloud":
        return [(None, 1.0, row["unit_price"])]
    price = cost.cloud[row["model"]]
    share = price.input_token_share
    return [
        ("input", share, price.input_per_1k_tokens),
        ("output", 1.0 - share, price.output_per_1k_tokens),
    ]


def focus_rows(breakdown: pl.DataFrame, cost: CostPolicy) -> pl.DataFrame:
    """FOCUS rows (`FOCUS_SCHEMA`) from a `cost_breakdown` frame. Pure."""
    records: list[dict[str, Any]] = []
    billable = breakdown.filter(
        pl.col("priced") & pl.col("cost").is_not_null() & pl.col("cost_low").is_not_null()
    )
    for row in billable.iter_rows(named=True):
        block = _BLOCK.get(row["pricing_unit"], 1.0)
        for token_type, share, unit_price in _meters(cost, row):
            per_unit = unit_price / block
            quantity = max(row["consumed_quantity"], 0.0) * share
            money = quantity * per_unit
            meter = f"{token_type} tokens" if token_type else row["consumed_unit"]
            records.append(
                {
                    "BilledCost": money,
                    "EffectiveCost": money,
                    "ListCost": money,
                    "ListUnitPrice": unit_price,
                    "BillingCurrency": row["currency"],
                    "ChargeCategory": "Usage",
                    "ChargeDescription": (
                        f"{row['model']} on the {row['route']} route: {meter} "
                        f"(estimated from DP telemetry)"
                    ),
                    "ChargePeriodStart": row["charge_period_start"],
                    "ChargePeriodEnd": row["charge_period_end"],
                    "ConsumedQuantity": quantity,
                    "ConsumedUnit": row["consumed_unit"],
                    "PricingQuantity": quantity / block,
                    "PricingUnit": row["pricing_unit"],
                    "RegionId": row["region"],
                    "ServiceCategory": SERVICE_CATEGORY,
                    "ServiceName": _SERVICE[row["route"]],
                    "x_Route": row["route"],
                    "x_ModelVersion": row["model"],
                    "x_TokenType": token_type,
                    "x_Requests": row["requests"],
                    "x_CostLow": row["consumed_quantity_low"] * share * per_unit,
                    "x_CostHigh": row["consumed_quantity_high"] * share * per_unit,
                    "x_CostStdError": row["consumed_quantity_std_error"] * share * per_unit,
                    "x_ConsumedQuantityLow": row["consumed_quantity_low"] * share,
                    "x_ConsumedQuantityHigh": row["consumed_quantity_high"] * share,
                    "x_ConfidenceLevel": row["level"],
                    "x_IntervalMethod": row["interval"],
                    "x_PrivacyModel": row["privacy_model"],
                }
            )
    return pl.DataFrame(records, schema=FOCUS_SCHEMA)


FocusFormat = Literal["csv", "parquet"]


def focus_format(path: Path) -> FocusFormat:
    """The file format a path asks for, by its suffix (.csv or .parquet)."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    raise InvalidQueryError(
        f"{path}: a FOCUS export is .csv or .parquet, not {suffix or 'no suffix'!r}"
    )


def write_focus(rows: pl.DataFrame, path: Path | str) -> Path:
    """Write FOCUS rows as CSV (ISO 8601 UTC times) or Parquet, by the path's suffix."""
    target = Path(path)
    fmt = focus_format(target)
    if fmt == "csv":
        rows.write_csv(target, datetime_format=_CSV_TIME)
    else:
        rows.write_parquet(target)
    return target


def read_focus(path: Path | str) -> pl.DataFrame:
    """Read a FOCUS export back with its column types (`FOCUS_SCHEMA`)."""
    source = Path(path)
    if focus_format(source) == "parquet":
        return pl.read_parquet(source)
    text_schema = {
        name: pl.String if dtype in (_TIME, _MONEY) else dtype
        for name, dtype in FOCUS_SCHEMA.items()
    }
    frame = pl.read_csv(source, schema=text_schema)
    return frame.with_columns(
        *(
            pl.col(n).str.to_datetime(_CSV_TIME, time_zone="UTC")
            for n, t in FOCUS_SCHEMA.items()
            if t == _TIME
        ),
        *(
            pl.col(n).str.to_decimal(scale=12).cast(_MONEY)
            for n, t in FOCUS_SCHEMA.items()
            if t == _MONEY
        ),
    )
