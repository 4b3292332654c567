"""Salvage a batch the warehouse refused: store what can be stored, single out the rest.

A batch is written in one transaction, so one row DuckDB refuses fails all of it. Then
the batch is halved and each half written on its own, recursively, until every failure
is pinned to one item: k bad items among n cost O(k log n) transactions, and the good
items are stored in their original order (a half is written only after the half before
it). Pure logic over a `write` callable, so it is tested without a database.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["Salvage", "salvage"]

T = TypeVar("T")
R = TypeVar("R")


@dataclass(slots=True)
class Salvage(Generic[T, R]):
    """What a salvage wrote (one result per successful write) and what it could not."""

    written: list[R] = field(default_factory=list)
    failed: list[tuple[T, BaseException]] = field(default_factory=list)


def salvage(
    items: Sequence[T],
    error: BaseException,
    write: Callable[[Sequence[T]], R],
    unstorable: tuple[type[BaseException], ...],
) -> Salvage[T, R]:
    """`items`, written together, failed with `error` (one of `unstorable`): write them in
    halves until each failure is one item. Any other error from `write` propagates (the
    warehouse itself is failing, not a row)."""
    out: Salvage[T, R] = Salvage()

    def split(part: Sequence[T], failure: BaseException) -> None:
        if len(part) == 1:
            out.failed.append((part[0], failure))
            return
        middle = len(part) // 2
        for half in (part[:middle], part[middle:]):
            try:
                out.written.append(write(half))
            except unstorable as exc:
                split(half, exc)

    if items:
        split(items, error)
    return out
