"""Per-source token buckets: a burst, then the refill rate; a bounded table."""

from __future__ import annotations

import pytest

from ingest._ratelimit import TokenBucketLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_source_gets_its_burst_then_waits_for_the_refill() -> None:
    clock = Clock()
    limiter = TokenBucketLimiter(rate=2.0, burst=3, clock=clock)

    admitted = [limiter.take("a") for _ in range(3)]
    refused = limiter.take("a")
    clock.now += 0.5  # one token back at 2/s
    after_refill = limiter.take("a")

    assert admitted == [0.0, 0.0, 0.0]
    assert refused == pytest.approx(0.5)
    assert after_refill == 0.0
    assert limiter.take("a") == pytest.approx(0.5)


def test_sources_have_their_own_buckets() -> None:
    limiter = TokenBucketLimiter(rate=1.0, burst=1, clock=Clock())
    assert limiter.take("a") == 0.0
    assert limiter.take("a") > 0
    assert limiter.take("b") == 0.0


def test_a_bucket_never_holds_more_than_the_burst() -> None:
    clock = Clock()
    limiter = TokenBucketLimiter(rate=10.0, burst=2, clock=clock)
    limiter.take("a")
    clock.now += 3600
    assert [limiter.take("a") == 0.0 for _ in range(3)] == [True, True, False]


def test_a_clock_stepping_back_refills_nothing() -> None:
    clock = Clock()
    limiter = TokenBucketLimiter(rate=1.0, burst=1, clock=clock)
    limiter.take("a")
    clock.now -= 60
    assert limiter.take("a") == pytest.approx(1.0)


def test_the_table_keeps_the_most_recent_sources_only() -> None:
    limiter = TokenBucketLimiter(rate=1.0, burst=1, max_sources=100, clock=Clock())
    limiter.take("regular")
    for i in range(1000):  # a flood from many addresses
        limiter.take(f"10.0.{i // 256}.{i % 256}")
        if i % 50 == 0:
            assert limiter.take("regular") > 0  # seen recently: kept, still empty
    assert len(limiter) == 100


def test_nonsense_limits_are_refused() -> None:
    for kwargs in ({"rate": 0.0, "burst": 1}, {"rate": 1.0, "burst": 0}):
        with pytest.raises(ValueError, match="rate must be positive"):
            TokenBucketLimiter(**kwargs)  # type: ignore[arg-type]
