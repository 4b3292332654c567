"""Salvaging a refused batch (pure: a fake `write` stands in for the warehouse), and the
backoff the sink waits for Kafka with."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import pytest

from ingest._backoff import Backoff
from ingest._salvage import salvage


class Refused(Exception):
    """What the fake warehouse raises for a batch holding a bad item."""


class _Warehouse:
    def __init__(self, bad: set[int]) -> None:
        self.bad = bad
        self.stored: list[int] = []
        self.calls = 0

    def write(self, part: Sequence[int]) -> int:
        self.calls += 1
        if self.bad & set(part):
            raise Refused(f"refused {sorted(self.bad & set(part))}")
        self.stored.extend(part)
        return len(part)


@pytest.mark.parametrize("bad", [{0}, {63}, {17}, {3, 4}, {0, 31, 32, 63}, set(range(64))])
def test_every_good_item_is_stored_in_order_and_every_bad_one_pinned(bad: set[int]) -> None:
    items = list(range(64))
    warehouse = _Warehouse(bad)
    out = salvage(items, Refused("whole batch"), warehouse.write, (Refused,))
    assert warehouse.stored == [i for i in items if i not in bad]
    assert sorted(item for item, _ in out.failed) == sorted(bad)
    assert all(str(item) in str(err) for item, err in out.failed)
    assert sum(out.written) == 64 - len(bad)


def test_one_bad_item_costs_a_logarithmic_number_of_writes() -> None:
    warehouse = _Warehouse({500})
    salvage(list(range(1000)), Refused("whole batch"), warehouse.write, (Refused,))
    assert warehouse.calls <= 2 * 10  # two halves per level, log2(1000) < 10 levels


def test_a_single_refused_item_is_the_failure_without_another_write() -> None:
    warehouse = _Warehouse({7})
    error = Refused("it")
    out = salvage([7], error, warehouse.write, (Refused,))
    assert out.failed == [(7, error)]
    assert warehouse.calls == 0


def test_an_error_that_is_not_about_a_row_propagates() -> None:
    def broken(part: Sequence[int]) -> int:
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        salvage([1, 2, 3], Refused("first"), broken, (Refused,))


def test_backoff_grows_to_its_maximum() -> None:
    delays = list(itertools.islice(Backoff(0.5, 4.0).delays(), 6))
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    with pytest.raises(ValueError, match="not a backoff"):
        Backoff(initial=0)
