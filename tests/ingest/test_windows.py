"""An envelope's window is exactly one aligned window of its policy (as the client
builds windows), or it is refused `window_misaligned`: a device cannot cut a policy
window into several shorter releases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from nacl.public import PrivateKey

from client._window import WindowClock
from ingest import Accepted, EnvelopeVerifier, Rejected
from ingest._report_rules import ReportRules
from ingest._windows import AlignedWindow, aligned_window
from policies import PILOT_POLICY_PATH, load_policy
from schemas import RejectReason
from tests.ingest.kit import Device

PILOT = load_policy(PILOT_POLICY_PATH)
DAY = datetime(2025, 3, 4, tzinfo=UTC)
NOW = DAY + timedelta(days=3)


@pytest.fixture
def key() -> PrivateKey:
    return PrivateKey.generate()


@pytest.fixture
def verifier(key: PrivateKey) -> EnvelopeVerifier:
    return EnvelopeVerifier(
        key,
        region="eu-test",
        known_policy_hashes=[PILOT.content_hash],
        report_rules=ReportRules([PILOT]),
    )


def _verify(
    verifier: EnvelopeVerifier, key: PrivateKey, start: datetime, end: datetime
) -> Accepted | Rejected:
    device = Device("eu-test")
    env = device.envelope(
        window_start=start.isoformat(),
        window_end=end.isoformat(),
        sent_at=(end + timedelta(seconds=5)).isoformat(),
    )
    return verifier.verify(device.item(key.public_key, env), received_at=NOW)


def test_the_windows_the_client_builds_are_accepted(
    verifier: EnvelopeVerifier, key: PrivateKey
) -> None:
    day = timedelta(seconds=PILOT.window_seconds)
    clock = WindowClock(PILOT.window_seconds, DAY + timedelta(hours=9))
    windows = clock.close_until(DAY + 3 * day)
    assert len(windows) == 3
    for window in windows:
        verdict = _verify(verifier, key, window.start, window.end)
        assert isinstance(verdict, Accepted), verdict


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (DAY, DAY + timedelta(days=2)),  # two policy windows in one envelope
        (DAY + timedelta(hours=12), DAY + timedelta(hours=36)),  # straddles a boundary
        (DAY - timedelta(seconds=1), DAY + timedelta(hours=1)),  # one second early
        (DAY, DAY + timedelta(hours=8)),  # the first part of a window (cut short)
        (DAY + timedelta(hours=8), DAY + timedelta(days=1)),  # the rest of it
        (DAY + timedelta(hours=1), DAY + timedelta(hours=2)),  # an hour inside it
        (DAY, DAY + timedelta(days=1, seconds=-1)),  # a second short
    ],
)
def test_a_window_other_than_one_aligned_policy_window_is_refused(
    verifier: EnvelopeVerifier, key: PrivateKey, start: datetime, end: datetime
) -> None:
    verdict = _verify(verifier, key, start, end)
    assert isinstance(verdict, Rejected)
    assert verdict.reason is RejectReason.WINDOW_MISALIGNED
    assert "86400 s policy window" in verdict.detail


def test_the_aligned_window_of_a_window() -> None:
    whole = aligned_window(DAY, DAY + timedelta(days=1), 86_400)
    assert whole == AlignedWindow(DAY, DAY + timedelta(days=1))
    assert isinstance(
        aligned_window(DAY + timedelta(hours=1), DAY + timedelta(hours=2), 86_400), str
    )
    assert isinstance(aligned_window(DAY, DAY + timedelta(days=1, seconds=1), 86_400), str)
    year_one = datetime(1, 1, 1, tzinfo=UTC)
    assert aligned_window(year_one, year_one + timedelta(hours=1), 7 * 3600) == (
        "the window is at the edge of the calendar"
    )


def test_a_policy_known_by_hash_only_has_no_window_to_check(key: PrivateKey) -> None:
    hash_only = EnvelopeVerifier(key, region="eu-test", known_policy_hashes=[PILOT.content_hash])
    verdict = _verify(hash_only, key, DAY, DAY + timedelta(days=2))
    assert isinstance(verdict, Accepted)
    assert verdict.item.envelope.window_end == DAY + timedelta(days=2)
