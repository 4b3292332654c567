"""The ingest refuses a window past its tiers' retention (`window_expired`)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from nacl.public import PrivateKey

from ingest._retention_rules import RetentionRules
from policies import DEFAULT_POLICY_PATH, load_policy
from schemas import BatchResult, EnvelopeV1, RejectReason
from tests.ingest.kit import _PILOT, WINDOW, Device, policy_hash

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
SKEW = timedelta(minutes=5)
RULES = RetentionRules([_PILOT], slack=SKEW)
# The pilot policy keeps health 395 days, performance 90, content 7.


def _ending(days_before: float, *, tier: str = "performance", **overrides: Any) -> EnvelopeV1:
    end = NOW - timedelta(days=days_before)
    env = Device().envelope(
        window_start=(end - WINDOW).isoformat(),
        window_end=end.isoformat(),
        sent_at=end.isoformat(),
        **overrides,
    )
    for aggregate in env["aggregates"]:
        aggregate["tier"] = tier
    return EnvelopeV1.model_validate_json(json.dumps(env))


GRACE = WINDOW + timedelta(hours=1) + SKEW
"""What an honest client may take past a tier's retention: a window until its next
close strips the tier, its budget hold and send retries, the clock skew."""


@pytest.mark.parametrize(("tier", "kept"), [("performance", 90), ("health", 395), ("content", 7)])
def test_each_tier_is_held_to_its_own_retention_and_the_grace(tier: str, kept: int) -> None:
    days = timedelta(days=kept)
    just_in = (days + GRACE - timedelta(minutes=1)) / timedelta(days=1)
    assert RULES.problem(_ending(just_in, tier=tier), NOW) is None
    problem = RULES.problem(_ending(kept + 1.5, tier=tier), NOW)
    assert problem == (
        f"the window ended {kept + 1} days before it arrived; {tier} data is kept {kept} days "
        "(the policy's retention)"
    )
    # One minute past the grace is refused.
    just_out = (days + GRACE + timedelta(minutes=1)) / timedelta(days=1)
    assert RULES.problem(_ending(just_out, tier=tier), NOW) is not None


def test_a_tier_that_expired_while_its_window_waited_is_still_taken() -> None:
    # The client strips expired tiers when a window closes; one that expires between
    # two closes is sent with the rest (review s18b: health lost with performance).
    envelope = _ending(90 + 0.5, tier="performance")
    assert RULES.problem(envelope, NOW) is None


def test_an_envelope_without_tiers_is_held_to_the_longest_retention() -> None:
    assert RULES.problem(_ending(395, aggregates=[]), NOW) is None
    assert RULES.problem(_ending(397.5, aggregates=[]), NOW) == (
        "the window ended 397 days before it arrived; data under this policy is kept 395 "
        "days at most"
    )


def test_a_policy_known_by_hash_only_is_held_to_the_longest_served_retention() -> None:
    other = load_policy(DEFAULT_POLICY_PATH)
    rules = RetentionRules([other], slack=SKEW)
    longest = max(other.retention.days.values())
    assert _PILOT.content_hash != other.content_hash
    assert rules.problem(_ending(longest - 2), NOW) is None
    assert rules.problem(_ending(longest + 2), NOW) is not None


def test_a_policy_known_by_hash_only_is_aged_from_its_windows_start() -> None:
    # Its window's length is not checked: a window from year 1 to now is refused.
    rules = RetentionRules([load_policy(DEFAULT_POLICY_PATH)], slack=SKEW)
    env = Device().envelope(
        window_start=datetime(1, 1, 1, tzinfo=UTC).isoformat(),
        window_end=NOW.isoformat(),
        sent_at=NOW.isoformat(),
        aggregates=[],
    )
    problem = rules.problem(EnvelopeV1.model_validate_json(json.dumps(env)), NOW)
    assert problem is not None
    assert problem.startswith("the window started ")


def test_no_served_policy_no_bound() -> None:
    assert RetentionRules([], slack=SKEW).problem(_ending(10_000), NOW) is None


async def test_the_ingest_refuses_a_window_past_retention(
    client: httpx.AsyncClient, device: Device, ingest_key: PrivateKey
) -> None:
    end = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - 95 * WINDOW
    old = device.envelope(
        window_start=(end - WINDOW).isoformat(),
        window_end=end.isoformat(),
        sent_at=(end + timedelta(seconds=5)).isoformat(),
        policy_hash=policy_hash(),
    )
    resp = await client.post(
        "/v1/envelopes", json={"envelopes": [device.item(ingest_key.public_key, old)]}
    )
    result = BatchResult.model_validate_json(resp.content).results[0]
    assert resp.status_code == 422
    assert result.reason == RejectReason.WINDOW_EXPIRED
    assert result.detail is not None
    assert "performance data is kept 90 days" in result.detail
    # The device's next, recent window is its own matter: nothing was admitted.
    assert (
        await client.post("/v1/envelopes", json={"envelopes": [device.item(ingest_key.public_key)]})
    ).status_code == 202
