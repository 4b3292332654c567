"""Per-source token buckets for the endpoints anyone may call, in a bounded table.

Each source (the client's IP address) has a bucket of `burst` tokens refilled at
`rate` per second; a request takes one or is refused with the seconds until one is
back. Buckets live in an LRU table of at most `max_sources` entries: a flood from many
addresses evicts the least recently seen buckets instead of growing memory. An evicted
source starts again with a full bucket, which costs it nothing it could not get from a
fresh address anyway; the table bounds memory, not the attacker's address space.

    limiter = TokenBucketLimiter(rate=2.0, burst=20)
    wait = limiter.take("198.51.100.7")     # 0.0: admitted; > 0: refuse, retry after
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["TokenBucketLimiter"]


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


class TokenBucketLimiter:
    """Token buckets per source, at most `max_sources` of them. Thread-safe; a `take`
    is a dict lookup and a little arithmetic, fine on the event loop."""

    def __init__(
        self,
        *,
        rate: float,
        burst: int,
        max_sources: int = 65_536,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0 or burst < 1 or max_sources < 1:
            raise ValueError("rate must be positive, burst and max_sources at least 1")
        self.rate = rate
        self.burst = burst
        self.max_sources = max_sources
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        with self._lock:
            return len(self._buckets)

    def take(self, source: str) -> float:
        """Take a token for `source`: 0.0 if admitted, else the seconds until it would be."""
        now = self._clock()
        with self._lock:
            bucket = self._buckets.get(source)
            if bucket is None:
                bucket = _Bucket(float(self.burst), now)
                self._buckets[source] = bucket
                if len(self._buckets) > self.max_sources:
                    self._buckets.popitem(last=False)
            else:
                self._buckets.move_to_end(source)
                # max(): a clock that stepped back refills nothing rather than draining.
                elapsed = max(0.0, now - bucket.at)
                bucket.tokens = min(float(self.burst), bucket.tokens + elapsed * self.rate)
                bucket.at = now
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return 0.0
            return (1.0 - bucket.tokens) / self.rate
