"""Synthetic warehouses for the cost tests: secure aggregates of the three signals the
cost model reads, per region, with known truth (`tests.analytics._aggregates`).

Each region holds, in one window: the requests counter per route (one model version),
the latency histogram per route and the token histogram per route, each batch with
fresh OpenDP noise. The true cost of a cell is price x true requests x true mean.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import duckdb
import numpy as np
import polars as pl

from analytics._cost import ROUTES
from policies import CloudPrice, CostPolicy, EdgePrice, LocalPrice
from tests.analytics._aggregates import (
    AggregateTruth,
    Batch,
    counter_batch,
    histogram_batches,
    insert_batches,
)

MODEL = "m@1"
REQUESTS = "inference.requests"
LATENCY = "gen_ai.client.operation.duration"
TOKENS = "gen_ai.client.token.usage"

COST = CostPolicy(
    currency="EUR",
    charge_period="day",
    cloud={
        MODEL: CloudPrice(input_per_1k_tokens=0.5, output_per_1k_tokens=1.5, input_token_share=0.6)
    },
    edge=EdgePrice(per_gpu_second=0.02, gpu_seconds_per_latency_second=0.5),
    local=LocalPrice(wh_per_inference=2.0, price_per_kwh=0.25),
)
# Blended cloud price per 1,000 tokens: 0.6 x 0.5 + 0.4 x 1.5.
CLOUD_PER_1K = 0.9
EDGE_PER_LATENCY_SECOND = 0.02 * 0.5
LOCAL_PER_INFERENCE = 2.0 / 1000.0 * 0.25


@dataclass(frozen=True)
class CellTruth:
    """A cost cell's true requests and true mean use per request."""

    requests: float
    latency_mean: float
    tokens_mean: float

    def cost_per_inference(self, route: str) -> float:
        if route == "cloud":
            return CLOUD_PER_1K * self.tokens_mean / 1000.0
        if route == "edge":
            return EDGE_PER_LATENCY_SECOND * self.latency_mean
        return LOCAL_PER_INFERENCE

    def cost(self, route: str) -> float:
        return self.requests * self.cost_per_inference(route)

    def cost_per_1k_tokens(self, route: str) -> float:
        return 1000.0 * self.cost_per_inference(route) / self.tokens_mean


def region_name(i: int) -> str:
    return f"r{i:03d}"


def build_cost_fleet(
    conn: duckdb.DuckDBPyConnection, regions: int, seed: int, *, model: str = MODEL
) -> dict[tuple[str, str], CellTruth]:
    """Write `regions` regions' batches of one model version; return the truth per
    (region, route)."""
    rng = np.random.default_rng(seed)
    batches: list[Batch] = []
    for i in range(regions):
        region = region_name(i)
        cells = [{"model": model, "route": r} for r in ROUTES]
        requests = counter_batch(REQUESTS, 0, cells, rng, scale=40.0, low=2000, high=8000)
        latency = histogram_batches(
            LATENCY, 0, cells, rng, mean=[1.2, 0.4, 0.8], events=(1500, 4000)
        )
        tokens = histogram_batches(
            TOKENS,
            0,
            [{"route": r} for r in ROUTES],
            rng,
            bounds=(64.0, 256.0, 1024.0),
            sum_scale=400.0,
            resolution=1.0,
            mean=[300.0, 200.0, 250.0],
            events=(1500, 4000),
        )
        for batch in [requests, *latency, *tokens]:
            batch.region = region
            batches.append(batch)
    # AggregateTruth adds cells over regions; the truth per region is read off the
    # batches' own entries (units x resolution are the true values).
    insert_batches(conn, batches, AggregateTruth())
    out: dict[tuple[str, str], CellTruth] = {}
    values = _by_region(batches)
    # Tokens per request: the mean per event times the region's token events per request
    # over all routes (`analytics._cost_tokens`); the counts here are not one per request.
    events: dict[str, float] = {}
    requests: dict[str, float] = {}
    for (region, _), v in values.items():
        events[region] = events.get(region, 0.0) + v["tok_count"]
        requests[region] = requests.get(region, 0.0) + v["requests"]
    for (region, route), v in values.items():
        per_request = events[region] / requests[region]
        out[(region, route)] = CellTruth(
            v["requests"],
            v["lat_sum"] / v["lat_count"],
            v["tok_sum"] / v["tok_count"] * per_request,
        )
    return out


def _by_region(batches: list[Batch]) -> dict[tuple[str, str], dict[str, float]]:
    out: dict[tuple[str, str], dict[str, float]] = {}
    names = {
        (REQUESTS, "counter"): "requests",
        (LATENCY, "count"): "lat_count",
        (LATENCY, "sum"): "lat_sum",
        (TOKENS, "count"): "tok_count",
        (TOKENS, "sum"): "tok_sum",
    }
    for batch in batches:
        for entry in batch.entries:
            name = names.get((batch.signal, entry.kind))
            if name is None:
                continue
            route = entry.attributes["route"]
            out.setdefault((batch.region, route), {})[name] = entry.units * batch.resolution
    return out


START = datetime(2026, 3, 2, tzinfo=UTC)
END = datetime(2026, 3, 3, tzinfo=UTC)
_PERIOD = {"charge_period_start": START, "charge_period_end": END, "region": "eu"}


def measured_requests(rows: list[tuple[str, str, float, float, tuple[float, ...]]]) -> pl.DataFrame:
    """(route, model, requests, variance, (low_0, high_0, low_1, high_1)) rows."""
    return pl.DataFrame(
        [
            {
                **_PERIOD,
                "route": route,
                "model": model,
                "requests": n,
                "requests_var": var,
                "devices": 500,
                "privacy_model": "aggregate",
                "interval": "exact",
                "low_0": b[0],
                "high_0": b[1],
                "low_1": b[2],
                "high_1": b[3],
            }
            for route, model, n, var, b in rows
        ]
    )


def measured_means(rows: list[dict[str, Any]]) -> pl.DataFrame:
    return pl.DataFrame([{**_PERIOD, "interval": "exact", **r} for r in rows])


def measured_mean(mean: float, se: float, bounds: tuple[float | None, ...]) -> dict[str, Any]:
    return {
        "mean": mean,
        "mean_se": se,
        "low_0": bounds[0],
        "high_0": bounds[1],
        "low_1": bounds[2],
        "high_1": bounds[3],
    }


def hand_measured() -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Requests, latency and token frames (`analytics._cost_measure` shapes) given by
    hand: bounds at the level (index 0) and at 1 - alpha/2 (index 1)."""
    requests = measured_requests(
        [
            ("cloud", MODEL, 1000.0, 400.0, (960.0, 1040.0, 950.0, 1050.0)),
            ("edge", MODEL, 2000.0, 900.0, (1940.0, 2060.0, 1930.0, 2070.0)),
            ("local", MODEL, 3000.0, 100.0, (2980.0, 3020.0, 2975.0, 3025.0)),
            ("cloud", "other", 5.0, 400.0, (-35.0, 45.0, -45.0, 55.0)),
            ("other", MODEL, 7.0, 400.0, (-33.0, 47.0, -43.0, 57.0)),
        ]
    )
    latency = measured_means(
        [
            {"route": "edge", "model": MODEL, **measured_mean(0.4, 0.01, (0.38, 0.42, 0.37, 0.43))},
            {
                "route": "cloud",
                "model": MODEL,
                **measured_mean(1.2, 0.01, (1.18, 1.22, 1.17, 1.23)),
            },
        ]
    )
    tokens = measured_means(
        [
            {"route": "cloud", **measured_mean(300.0, 5.0, (290.0, 310.0, 288.0, 312.0))},
            {"route": "edge", **measured_mean(200.0, 4.0, (192.0, 208.0, 190.0, 210.0))},
            {"route": "local", **measured_mean(250.0, 5.0, (240.0, 260.0, 238.0, 262.0))},
        ]
    )
    return requests, latency, tokens
