"""The cost plots draw what is estimable and say nothing (None) otherwise."""

from __future__ import annotations

import polars as pl
import pytest

from analytics._cost import price_cells
from analytics._cost_plots import cost_figure, what_if_change_figure, what_if_figure
from analytics._cost_whatif import project_move
from tests.analytics._cost_fleet import COST, hand_measured


@pytest.fixture
def priced() -> pl.DataFrame:
    return price_cells(COST, *hand_measured(), 0.95)


@pytest.mark.parametrize("measure", ["cost", "cost_per_inference", "cost_per_1k_tokens"])
def test_the_breakdown_plot_draws_every_priced_route(priced: pl.DataFrame, measure: str) -> None:
    svg = cost_figure(priced, measure)
    assert svg is not None
    assert svg.startswith("<svg")
    for route in ("cloud", "edge", "local"):
        assert f"route={route}" in svg
    # The unpriced route is not drawn.
    assert "route=other" not in svg
    assert "(EUR)" in svg


def test_a_breakdown_with_nothing_bounded_is_not_drawn(priced: pl.DataFrame) -> None:
    unbounded = priced.with_columns(pl.lit(None, dtype=pl.Float64).alias("cost_low"))
    assert cost_figure(unbounded, "cost") is None
    with pytest.raises(ValueError, match="measure must be one of"):
        cost_figure(priced, "requests")


def test_the_what_if_plots_draw_baseline_projection_and_change(priced: pl.DataFrame) -> None:
    projection = project_move(COST, priced, 0.5, "local", 0.95, 5)
    svg = what_if_figure(projection)
    assert svg is not None
    assert "scenario=baseline" in svg
    assert "scenario=projected" in svg
    assert "50% of cloud traffic to local" in svg
    change = what_if_change_figure(projection)
    assert change is not None
    assert "below 0: a saving" in change


def test_a_what_if_without_intervals_is_not_drawn(priced: pl.DataFrame) -> None:
    projection = project_move(COST, priced, 0.5, "local", 0.95, 5).with_columns(
        pl.lit(None, dtype=pl.Float64).alias(c)
        for c in ("baseline_cost_low", "projected_cost_low", "change_low")
    )
    assert what_if_figure(projection) is None
    assert what_if_change_figure(projection) is None
