"""Synthetic warehouses for the cost tests: secure aggregates of the three signals the
cost model reads, per region, with known truth (`tests.analytics._aggregates`).

Each region holds, in one window: the requests counter per route (one model version),
the latency histogram per route and the token histogram per route, each batch with
fresh OpenDP noise. The true cost of a cell is price x true requests x true mean.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import numpy as np

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
    conn: duckdb.DuckDBPyConnection, regions: int, seed: int
) -> dict[tuple[str, str], CellTruth]:
    """Write `regions` regions' batches; return the truth per (region, route)."""
    rng = np.random.default_rng(seed)
    batches: list[Batch] = []
    for i in range(regions):
        region = region_name(i)
        cells = [{"model": MODEL, "route": r} for r in ROUTES]
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
    for (region, route), v in values.items():
        out[(region, route)] = CellTruth(
            v["requests"], v["lat_sum"] / v["lat_count"], v["tok_sum"] / v["tok_count"]
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
