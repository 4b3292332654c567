"""`record_prompt` costs the caller bounded time whatever the text: in background mode
it checks the size cap and queues the prompt; the worker redacts and counts it.

The caller's time is measured against a plain regex scan of the same text (median of
several runs; the ratio cancels the machine's speed): redaction itself runs about 12x
such a scan (tests/client/test_redaction_time.py), so a call that stays a small
fraction of one scan did not redact on the caller's thread.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from client import MemoryTransport, Telemetry, TelemetryConfig
from client._drops import DropCounter
from client._prompt_queue import MAX_QUEUED_PROMPTS, PromptQueue
from client._redaction import MAX_PROMPT_CHARS, redact_findings
from policies import CounterSignal
from schemas import AppInfo, Tier
from tests.client.conftest import POLICY, FakeClock, MemoryIngest
from tests.client.test_redaction_time import _SCAN, ADVERSARIAL_MB, median_seconds

SIGNAL = "prompt.personal_data"
WITH_CONTENT = POLICY.model_copy(
    update={
        "signals": {
            **POLICY.signals,
            SIGNAL: CounterSignal(
                privacy_model="local",
                tier=Tier.CONTENT,
                attributes={"kind": ["email", "phone", "home_path", "credential", "card"]},
                max_per_window=5,
                epsilon=0.5,
            ),
        }
    }
)


@pytest.fixture
def background(tmp_path: Path, clock: FakeClock) -> Iterator[Telemetry]:
    ingest = MemoryIngest()
    qw = Telemetry(
        TelemetryConfig(
            app=AppInfo(name="demo-app", version="1.0"),
            region="eu-west",
            policy=WITH_CONTENT,
            ingest_public_key=ingest.public_key,
            transport=MemoryTransport(ingest.handle),
            state_dir=tmp_path / "state",
            clock=clock,
            mode="background",
            software_tiers=set(Tier),
        )
    )
    for tier in Tier:
        qw.grant_consent(tier)
    assert qw.flush(timeout=10.0)  # the worker's first round is over: it now sleeps
    yield qw
    qw.shutdown(carry_open_window=False, timeout=1.0)


def _queued_counts(qw: Telemetry) -> list[int]:
    """The prompt signal's cells as the next window close would read them."""
    return qw._signals[SIGNAL].table.take()  # type: ignore[return-value]


def test_a_1_mb_and_a_64_kib_adversarial_prompt_cost_the_caller_a_fraction_of_a_scan(
    background: Telemetry,
) -> None:
    longest = ADVERSARIAL_MB[:MAX_PROMPT_CHARS]
    repeats = 5  # well under half the queue: the worker is not woken while we measure
    assert repeats * 2 < MAX_QUEUED_PROMPTS
    for text in (ADVERSARIAL_MB, longest):
        scan = median_seconds(lambda text=text: _SCAN(text))  # type: ignore[misc]
        took = median_seconds(
            lambda text=text: background.record_prompt(text),  # type: ignore[misc]
            repeats=repeats,
        )
        assert took < scan / 10, (len(text), took, scan)
        assert took < 0.05  # the figure, for 1 MB
    assert background.dropped() == {"prompt_too_long": repeats}  # the 1 MB ones; 64 KiB queued
    assert background.flush(timeout=30.0)  # the worker redacts the queued ones
    assert sum(_queued_counts(background)) > 0


def test_the_worker_counts_a_queued_prompt_in_the_window_it_was_recorded_in(
    background: Telemetry,
) -> None:
    assert background.record_prompt("mail ann@example.com, call +44 20 7946 0958") == ""
    assert background.flush(timeout=10.0)
    kinds = WITH_CONTENT.signals[SIGNAL].attributes["kind"]
    counted = dict(zip([*kinds, "other"], _queued_counts(background), strict=True))
    assert counted == dict.fromkeys(counted, 0) | {"email": 1, "phone": 1}


@pytest.mark.parametrize("revoked_first", [True, False], ids=["grant", "revoke_then_grant"])
def test_a_prompt_queued_before_a_content_decision_is_never_counted_after_it(
    background: Telemetry, revoked_first: bool
) -> None:
    """Queued for the worker, then the user decides: what was recorded before the
    decision must not count in a window released under it (as for a counter add)."""
    if revoked_first:
        background.revoke_consent(Tier.CONTENT)
        assert background.wait_consent_durable(timeout=10.0)
        # The worker's round is over: it sleeps. (False: the deletion request waits, as
        # the fixture's transport takes none.)
        background.flush(timeout=10.0)
    assert background.record_prompt("mail ann@example.com") == ""  # queued
    if not revoked_first:
        background.revoke_consent(Tier.CONTENT)
    background.grant_consent(Tier.CONTENT)
    background.flush(timeout=10.0)  # the worker's round
    assert sum(_queued_counts(background)) == 0
    assert background.dropped() == {"prompt_discarded": 1}


def test_a_prompt_redacted_while_its_tier_is_granted_is_not_counted(
    background: Telemetry, monkeypatch: pytest.MonkeyPatch
) -> None:
    background.revoke_consent(Tier.CONTENT)
    assert background.wait_consent_durable(timeout=10.0)
    background.flush(timeout=10.0)  # the worker sleeps (see above)

    def redact_then_grant(text: str) -> tuple[str, dict[str, int]]:
        out = redact_findings(text)
        background.grant_consent(Tier.CONTENT)  # the user opts in while the worker redacts
        return out

    monkeypatch.setattr("client._telemetry.redact_findings", redact_then_grant)
    background.record_prompt("mail ann@example.com")
    background.flush(timeout=10.0)  # the worker's round: redacts, and the grant comes
    assert background.consented_tiers() == list(Tier)
    assert sum(_queued_counts(background)) == 0
    assert background.dropped() == {"prompt_discarded": 1}


def test_manual_mode_redacts_on_the_callers_thread_and_returns_the_text(
    tmp_path: Path, clock: FakeClock
) -> None:
    ingest = MemoryIngest()
    qw = Telemetry(
        TelemetryConfig(
            app=AppInfo(name="demo-app", version="1.0"),
            region="eu-west",
            policy=WITH_CONTENT,
            ingest_public_key=ingest.public_key,
            transport=MemoryTransport(ingest.handle),
            state_dir=tmp_path / "state",
            clock=clock,
            mode="manual",
            software_tiers=set(Tier),
        )
    )
    try:
        assert qw.record_prompt("mail ann@example.com") == "mail <EMAIL>"
        assert sum(_queued_counts(qw)) == 1
    finally:
        qw.shutdown(carry_open_window=False, timeout=1.0)


def test_a_full_prompt_queue_drops_the_new_prompt_and_counts_it() -> None:
    drops = DropCounter()
    queue = PromptQueue(drops, capacity=2)
    assert queue.offer("a", SIGNAL)
    assert queue.half_full
    assert queue.offer("b", SIGNAL)
    assert not queue.offer("c", SIGNAL)
    assert drops.snapshot() == {"prompt_queue_full": 1}
    assert queue.drain() == [("a", SIGNAL), ("b", SIGNAL)]
    assert len(queue) == 0
    assert not queue.half_full


def test_discarding_prompts_keeps_the_others_in_order() -> None:
    queue = PromptQueue(DropCounter())
    for text, signal in (("a", SIGNAL), ("b", "other.signal"), ("c", SIGNAL)):
        queue.offer(text, signal)
    assert queue.discard(lambda signal: signal == SIGNAL) == 2
    assert queue.drain() == [("b", "other.signal")]


def test_a_non_string_prompt_is_dropped_and_counted(background: Telemetry) -> None:
    assert background.record_prompt(b"bytes") == ""  # type: ignore[arg-type]
    assert background.dropped() == {"wrong_type": 1}
