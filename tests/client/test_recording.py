"""What an app developer sees when recording: other-mapping, clamping, drops, no raises."""

from __future__ import annotations

import math
from decimal import Decimal

import numpy as np
import pytest

from client import SignalKindError, Telemetry, TrueCounter, TrueHistogram, UnknownSignalError
from client._aggregation import CounterTable, HistogramTable
from client._domain import CellDomain
from client._drops import DropCounter
from client._instruments import Counter, Histogram
from tests.client.conftest import FakeClock, MakeTelemetry


def _truth(telemetry: Telemetry, clock: FakeClock) -> list[TrueCounter | TrueHistogram]:
    (window,) = telemetry.collect_with_truth(clock.advance(hours=1))
    return window.truth


def _counter_values(truth: list[TrueCounter | TrueHistogram], signal: str) -> dict[tuple, int]:
    return {
        tuple(t.attributes.values()): t.value
        for t in truth
        if isinstance(t, TrueCounter) and t.signal == signal
    }


def test_values_outside_the_domain_count_as_other(make_telemetry: MakeTelemetry, clock) -> None:
    qw = make_telemetry()
    requests = qw.counter("inference.requests")
    requests.add(1, route="local", model="a@1")
    requests.add(2, route="satellite", model="a@1")  # undeclared value
    requests.add(1, route="edge")  # missing label
    requests.add(1, route=3, model="b@2")  # not a string
    requests.add(1, model="b@2", route="local")  # other label order, same cell as below
    requests.add(1, route="local", model="b@2")
    values = _counter_values(_truth(qw, clock), "inference.requests")
    assert values[("local", "a@1")] == 1
    assert values[("other", "a@1")] == 2
    assert values[("edge", "other")] == 1
    assert values[("other", "b@2")] == 1
    assert values[("local", "b@2")] == 2
    assert qw.dropped() == {}


def test_undeclared_labels_are_dropped_and_counted(make_telemetry: MakeTelemetry, clock) -> None:
    qw = make_telemetry()
    requests = qw.counter("inference.requests")
    for _ in range(3):
        requests.add(1, route="local", model="a@1", user_id="alice")
    values = _counter_values(_truth(qw, clock), "inference.requests")
    assert values[("local", "a@1")] == 3  # the measurement is kept, the label is not
    assert qw.dropped() == {"undeclared_label": 3}


def test_counter_total_is_clamped_keeping_proportions(make_telemetry, clock) -> None:
    qw = make_telemetry()  # max_per_window = 10
    requests = qw.counter("inference.requests")
    requests.add(30, route="local", model="a@1")
    requests.add(10, route="cloud", model="b@2")
    values = _counter_values(_truth(qw, clock), "inference.requests")
    assert sum(values.values()) == 10
    assert values[("local", "a@1")] == 8  # 30 * 10/40 = 7.5, largest remainder first
    assert values[("cloud", "b@2")] == 2  # 10 * 10/40 = 2.5


def test_histogram_clamps_events_and_values(make_telemetry, clock) -> None:
    qw = make_telemetry()  # latency: buckets 0.1, 1, 10; 5 events; values in [0, 20]
    latency = qw.histogram("latency")
    latency.record(0.1, route="local")  # a value equal to a bound falls in its bucket
    latency.record(100.0, route="local")  # above the last bucket; summed as 20
    latency.record(-5, route="cloud")  # summed as 0
    truth = {
        t.attributes["route"]: t
        for t in _truth(qw, clock)
        if isinstance(t, TrueHistogram) and t.signal == "latency"
    }
    assert truth["local"].counts == [1, 0, 0, 1]
    assert truth["local"].sum == pytest.approx(20.1)
    assert truth["cloud"].counts == [1, 0, 0, 0]
    assert truth["cloud"].sum == 0.0

    for _ in range(10):
        latency.record(2.0, route="local")  # twice the event bound
    truth2 = [t for t in _truth(qw, clock) if isinstance(t, TrueHistogram)]
    assert sum(sum(t.counts) for t in truth2) == 5
    local = next(t for t in truth2 if t.attributes["route"] == "local")
    assert local.sum == pytest.approx(10.0)  # 5 kept events of 2.0: the mean is kept


BAD_COUNTER_AMOUNTS = [
    (-1, "negative_amount"),
    (1.5, "wrong_type"),
    (math.nan, "not_finite"),
    ("3", "wrong_type"),
    (None, "wrong_type"),
    (True, "wrong_type"),
    (Decimal(2), "wrong_type"),
]


@pytest.mark.parametrize(("amount", "reason"), BAD_COUNTER_AMOUNTS)
def test_bad_counter_amounts_never_raise(make_telemetry, clock, amount, reason) -> None:
    qw = make_telemetry()
    requests = qw.counter("inference.requests")
    requests.add(amount, route="local", model="a@1")
    requests.bind(route="local").add(amount)
    assert qw.dropped() == {reason: 2}
    assert sum(_counter_values(_truth(qw, clock), "inference.requests").values()) == 0


@pytest.mark.parametrize(
    ("value", "reason"),
    [(math.nan, "not_finite"), (math.inf, "not_finite"), ("1.0", "wrong_type"), ([], "wrong_type")],
)
def test_bad_histogram_values_never_raise(make_telemetry, value, reason) -> None:
    qw = make_telemetry()
    latency = qw.histogram("latency")
    latency.record(value, route="local")
    latency.bind(route="local").record(value)
    assert qw.dropped() == {reason: 2}


def test_unhashable_and_odd_attributes_never_raise(make_telemetry, clock) -> None:
    qw = make_telemetry()
    qw.counter("inference.requests").add(1, route=["local"], model={"a": 1})
    qw.histogram("latency").record(1.0, route=object())
    values = _counter_values(_truth(qw, clock), "inference.requests")
    assert values[("other", "other")] == 1


def test_attributes_named_like_a_parameter_are_labels_like_any_other(
    make_telemetry: MakeTelemetry, clock: FakeClock
) -> None:
    qw = make_telemetry()
    qw.record("app.starts", 1, name="x", value="y")
    qw.counter("inference.requests").add(1, amount="x", self="y", route="local", model="a@1")
    qw.histogram("latency").record(0.5, value="x", self="y", route="local")
    qw.counter("app.starts").bind(self="x").add()
    qw.histogram("latency").bind(self="x", route="cloud").record(0.5)
    assert qw.dropped() == {"undeclared_label": 8}  # each counted, each measurement kept
    truth = _truth(qw, clock)
    assert _counter_values(truth, "app.starts") == {(): 2}
    assert _counter_values(truth, "inference.requests")[("local", "a@1")] == 1
    events = {
        tuple(t.attributes.values()): sum(t.counts)
        for t in truth
        if isinstance(t, TrueHistogram) and t.signal == "latency"
    }
    assert events[("local",)] == 1
    assert events[("cloud",)] == 1


def test_a_declared_label_named_like_a_parameter_is_recorded() -> None:
    """`client.otel` forwards a policy's labels as keywords (`**labels`)."""
    drops = DropCounter()
    domain = CellDomain({"value": ["x"]})
    table = HistogramTable(domain.size, 2)
    Histogram("h", domain, table, drops, [1.0], (0.0, 2.0)).record(0.5, value="x")
    counters = CounterTable(domain.size)
    Counter("c", domain, counters, drops).add(2, value="x")
    assert [sum(snap.counts) for snap in table.take()] == [1, 0]  # "x", not "other"
    assert counters.take() == [2, 0]
    assert drops.snapshot() == {}


class _HashRaises(str):
    def __hash__(self) -> int:
        raise RuntimeError("hash")


class _LenRaises(str):
    def __len__(self) -> int:
        raise RuntimeError("len")


class _EqRaises(str):
    __hash__ = str.__hash__

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("eq")


@pytest.mark.parametrize("hostile", [_HashRaises, _LenRaises, _EqRaises])
def test_hostile_strings_never_raise(make_telemetry: MakeTelemetry, hostile: type[str]) -> None:
    odd = hostile("local")
    qw = make_telemetry()
    requests = qw.counter("inference.requests")
    requests.add(1, route="local", model="a@1")  # cached: a lookup compares with it
    requests.add(1, route=odd, model="a@1")
    requests.bind(route=odd).add(1)
    qw.histogram("latency").record(0.5, route="local")
    qw.histogram("latency").record(0.5, route=odd)
    qw.histogram("latency").bind(route=odd).record(0.5)
    qw.record(odd, 1)
    qw.record(["a", "list"], 1)  # type: ignore[arg-type]
    qw.record_prompt("mail ann@example.com", signal=odd)
    qw.record_prompt(_LenRaises("mail ann@example.com"))


def test_numpy_numbers_are_accepted(make_telemetry, clock) -> None:
    qw = make_telemetry()
    qw.counter("app.starts").add(np.int64(2))
    qw.histogram("latency").record(np.float32(0.5), route="local")
    truth = _truth(qw, clock)
    assert _counter_values(truth, "app.starts") == {(): 2}
    assert qw.dropped() == {}


def test_unknown_signal_by_name_is_dropped_not_raised(make_telemetry) -> None:
    qw = make_telemetry()
    qw.record("no.such.signal", 1, route="local")
    qw.record("app.starts", 1)
    assert qw.dropped() == {"unknown_signal": 1}


def test_setup_errors_are_clear(make_telemetry) -> None:
    qw = make_telemetry()
    with pytest.raises(UnknownSignalError, match=r"'no\.such' is not in the policy catalogue"):
        qw.counter("no.such")
    with pytest.raises(SignalKindError, match="declared as a histogram, not a counter"):
        qw.counter("latency")


def test_bound_handles_add_to_the_same_cell(make_telemetry, clock) -> None:
    qw = make_telemetry()
    requests = qw.counter("inference.requests")
    bound = requests.bind(route="edge", model="b@2")
    bound.add()
    bound.add(2)
    requests.add(1, route="edge", model="b@2")
    assert _counter_values(_truth(qw, clock), "inference.requests")[("edge", "b@2")] == 4
    bound.add(1)  # a handle outlives the window it was bound in
    assert _counter_values(_truth(qw, clock), "inference.requests")[("edge", "b@2")] == 1


class _ClassRaises:
    """An object whose `__class__` lookup raises (so does `isinstance` on it)."""

    @property
    def __class__(self) -> type:  # type: ignore[override]
        raise RuntimeError("class")


def test_an_amount_or_value_whose_class_lookup_raises_never_raises(make_telemetry) -> None:
    """Review s18b H7."""
    qw = make_telemetry()
    requests = qw.counter("inference.requests")
    requests.add(_ClassRaises(), route="local", model="a@1")
    requests.bind(route="local").add(_ClassRaises())
    qw.record("app.starts", _ClassRaises())  # type: ignore[arg-type]
    latency = qw.histogram("latency")
    latency.record(_ClassRaises(), route="local")  # type: ignore[arg-type]
    latency.bind(route="local").record(_ClassRaises())  # type: ignore[arg-type]
    assert qw.dropped() == {"wrong_type": 5}
