"""Exponential backoff delays, for waiting on a dependency that is not up yet."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["Backoff"]


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delays of `initial` seconds, growing by `factor` per attempt up to `maximum`."""

    initial: float = 0.5
    maximum: float = 10.0
    factor: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.maximum or self.factor < 1:
            raise ValueError(f"not a backoff: {self}")

    def delays(self) -> Iterator[float]:
        """An endless sequence of delays, in seconds."""
        delay = self.initial
        while True:
            yield delay
            delay = min(delay * self.factor, self.maximum)
