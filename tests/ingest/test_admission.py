"""Per-device admission at the intake: sequence numbers increase, one envelope per
device and window (one Prio3 contribution per policy window), retries are not
violations, and the ledger is charged atomically with the decision."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.public import PrivateKey

from auditlog import AuditLog
from client._shares import ReportSharer
from ingest import EnvelopeVerifier, InMemoryEnvelopeBus, RecentlyAccepted
from ingest._admission import Admitted, Candidate, DaySpend, DeviceMark, Refused, decide
from ingest._device_ledger import DeviceLedger
from ingest._errors import BusUnavailable, ConfigurationError, LedgerUnavailable
from ingest._intake import EnvelopeIntake
from ingest._pricing import EnvelopePrice
from ingest._report_rules import ReportRules
from ingest._windows import AlignedWindow
from policies import PILOT_POLICY_PATH, aggregation_tasks, load_policy
from schemas import BatchResult, EnvelopeV1, IngestedEnvelope, RejectReason
from tests.ingest.kit import FIRST_WINDOW, Device, counter_aggregate
from tests.ingest.sqlite_faults import CommitFailsAsOnAFullDisk

PILOT = load_policy(PILOT_POLICY_PATH)
DEFAULT = load_policy()
NOW = FIRST_WINDOW + timedelta(days=59)  # after the kit's windows (one day each)
TODAY = NOW.date().isoformat()


@pytest.fixture
def key() -> PrivateKey:
    return PrivateKey.generate()


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[DeviceLedger]:
    ledger = DeviceLedger(tmp_path / "ledger.sqlite3", [PILOT, DEFAULT])
    yield ledger
    ledger.close()


@pytest.fixture
def audit(tmp_path: Path) -> Iterator[AuditLog]:
    log = AuditLog(tmp_path / "audit.sqlite3")
    yield log
    log.close()


@pytest.fixture
def bus() -> InMemoryEnvelopeBus:
    return InMemoryEnvelopeBus()


@pytest.fixture
def intake(
    key: PrivateKey, bus: InMemoryEnvelopeBus, ledger: DeviceLedger, audit: AuditLog
) -> EnvelopeIntake:
    verifier = EnvelopeVerifier(
        key,
        region="eu-test",
        known_policy_hashes=[PILOT.content_hash, DEFAULT.content_hash],
        report_rules=ReportRules([PILOT, DEFAULT]),
    )
    # No duplicate cache: every retry reaches the ledger, as on another replica.
    return EnvelopeIntake(
        verifier, bus, RecentlyAccepted(0), audit, ledger=ledger, clock=lambda: NOW
    )


def _reasons(result: BatchResult) -> list[str | None]:
    return [r.reason.value if r.reason else None for r in result.results]


async def test_a_lower_or_equal_sequence_is_refused(
    intake: EnvelopeIntake, key: PrivateKey, audit: AuditLog
) -> None:
    device = Device("eu-test")
    first, second = device.envelope(), device.envelope()
    assert (await intake.submit([device.item(key.public_key, second)])).accepted == 1
    # Reordered (an older one arriving late) or replayed under a new id: both refused.
    late = device.item(key.public_key, first)
    replay = device.item(key.public_key, second | {"envelope_id": str(uuid.uuid4())})
    result = await intake.submit([late, replay])
    assert _reasons(result) == ["sequence_not_increasing"] * 2
    entries = audit.entries(device_id=device.device_id, reason="sequence_not_increasing")
    assert [e.decision for e in entries] == ["rejected", "rejected"]
    assert "is not above 2" in (entries[0].detail or "")


async def test_a_second_envelope_for_the_same_window_is_refused(
    intake: EnvelopeIntake, key: PrivateKey, bus: InMemoryEnvelopeBus
) -> None:
    device = Device("eu-test")
    env = device.envelope()
    overlapping = device.envelope(window_start=env["window_start"], window_end=env["window_end"])
    result = await intake.submit(
        [device.item(key.public_key, env), device.item(key.public_key, overlapping)]
    )
    assert _reasons(result) == [None, "duplicate_window"]
    assert len(bus.published) == 1


def _reports(start: datetime) -> list[dict[str, Any]]:
    sharer = ReportSharer(DEFAULT.content_hash, bytes(PrivateKey.generate().public_key))
    return [
        sharer.report(t, [0] * t.length, start).model_dump(mode="json")
        for t in aggregation_tasks(DEFAULT).values()
        if t.signal == "inference.errors"
    ]


async def test_one_prio3_contribution_per_device_and_policy_window(
    intake: EnvelopeIntake, key: PrivateKey
) -> None:
    device = Device("eu-test")
    day = FIRST_WINDOW + timedelta(days=1)

    def part(start: datetime, end: datetime) -> str:
        env = device.envelope(
            policy_hash=DEFAULT.content_hash,
            aggregates=[],
            reports=_reports(day),
            window_start=start.isoformat(),
            window_end=end.isoformat(),
            sent_at=(end + timedelta(seconds=1)).isoformat(),
        )
        return device.item(key.public_key, env)

    # A day's window cut in two (each part with reports): neither part is a policy
    # window; the whole day is, once; sent again it overlaps the first.
    morning = part(day, day + timedelta(hours=6))
    evening = part(day + timedelta(hours=6), day + timedelta(days=1))
    whole = part(day, day + timedelta(days=1))
    again = part(day, day + timedelta(days=1))
    next_day = part(day + timedelta(days=1), day + timedelta(days=2))
    result = await intake.submit([morning, evening, whole, again, next_day])
    assert _reasons(result) == [
        "window_misaligned",
        "window_misaligned",
        None,
        "duplicate_window",
        None,
    ]
    assert "overlaps one already accepted" in (result.results[3].detail or "")


async def test_a_retry_of_the_same_envelope_is_published_again_not_charged_again(
    intake: EnvelopeIntake, key: PrivateKey, bus: InMemoryEnvelopeBus, ledger: DeviceLedger
) -> None:
    device = Device("eu-test")
    items = [device.item(key.public_key) for _ in range(3)]
    assert (await intake.submit(items)).accepted == 3
    # The 202 was lost: the device sends the same batch again, plus a new envelope.
    retry = await intake.submit([*items, device.item(key.public_key)])
    assert _reasons(retry) == [None] * 4
    assert len(bus.published) == 7  # republished: the sink keeps one row per id
    assert ledger.spent(device.device_id, TODAY) == 4 * Decimal("2.6")


async def test_a_retry_after_a_503_is_accepted_and_charged_once(
    intake: EnvelopeIntake, key: PrivateKey, bus: InMemoryEnvelopeBus, ledger: DeviceLedger
) -> None:
    device = Device("eu-test")
    items = [device.item(key.public_key) for _ in range(2)]
    bus.fail_with = "kafka down"
    with pytest.raises(BusUnavailable):
        await intake.submit(items)
    bus.fail_with = None
    assert _reasons(await intake.submit(items)) == [None, None]
    assert len(bus.published) == 2
    assert ledger.spent(device.device_id, TODAY) == 2 * Decimal("2.6")


async def test_concurrent_requests_of_one_device_never_overspend(
    intake: EnvelopeIntake, key: PrivateKey, ledger: DeviceLedger
) -> None:
    device = Device("eu-test")
    items = [device.item(key.public_key) for _ in range(10)]
    results = await asyncio.gather(*(intake.submit([item]) for item in items))
    assert sum(r.accepted for r in results) == 6  # 6 x 2.6 <= 16 < 7 x 2.6
    assert ledger.spent(device.device_id, TODAY) == Decimal("15.6")


async def test_a_ledger_that_cannot_commit_is_a_503_and_nothing_is_published(
    intake: EnvelopeIntake, key: PrivateKey, bus: InMemoryEnvelopeBus, ledger: DeviceLedger
) -> None:
    device = Device("eu-test")
    ledger.close()
    with pytest.raises(LedgerUnavailable):
        await intake.submit([device.item(key.public_key)])
    assert bus.published == []


async def test_a_failed_commit_is_reported_as_itself_not_as_a_failed_rollback(
    intake: EnvelopeIntake,
    key: PrivateKey,
    bus: InMemoryEnvelopeBus,
    ledger: DeviceLedger,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before: the ROLLBACK after it raised "cannot rollback - no transaction is active",
    which replaced the real cause in the 503's detail."""
    device = Device("eu-test")
    monkeypatch.setattr(ledger, "_db", CommitFailsAsOnAFullDisk(ledger._db))
    with pytest.raises(LedgerUnavailable) as refused:
        await intake.submit([device.item(key.public_key)])
    assert str(refused.value) == "the device ledger did not commit: database or disk is full"
    assert bus.published == []
    assert ledger.spent(device.device_id, TODAY) == 0  # nothing charged
    # No transaction left open: the next request is decided and charged.
    assert (await intake.submit([device.item(key.public_key)])).accepted == 1
    assert ledger.spent(device.device_id, TODAY) > 0


# The pure rules' envelopes: never signed nor sealed; copied, not rebuilt (fast).
_BASE = EnvelopeV1.model_validate(Device("eu-test").envelope())


def _candidate(sequence: int, start: datetime, hours: int = 1) -> Candidate:
    env = _BASE.model_copy(
        update={
            "envelope_id": uuid.uuid4(),
            "sequence": sequence,
            "window_start": start,
            "window_end": start + timedelta(hours=hours),
        }
    )
    return Candidate(env, EnvelopePrice(Decimal("1.5"), Decimal(4)), None)


def test_the_rules_on_their_own() -> None:
    start = FIRST_WINDOW
    mark = DeviceMark(5, start + timedelta(hours=2), None, frozenset())
    for candidate, reason in [
        (_candidate(5, start + timedelta(hours=3)), RejectReason.SEQUENCE_NOT_INCREASING),
        (_candidate(6, start + timedelta(hours=1)), RejectReason.DUPLICATE_WINDOW),
    ]:
        decision = decide(mark, DaySpend(), candidate, recent=frozenset())
        assert isinstance(decision, Refused)
        assert decision.reason is reason
    ok = _candidate(6, start + timedelta(hours=2))
    admitted = decide(mark, DaySpend(Decimal("2.5"), Decimal(8)), ok, recent=frozenset())
    assert not isinstance(admitted, Refused)
    # The day's cap tightens to the envelope's policy's (4): 2.5 + 1.5 is exactly 4.
    assert admitted.spend == DaySpend(Decimal("4.0"), Decimal(4))  # type: ignore[union-attr]
    over = decide(mark, DaySpend(Decimal("2.6"), None), ok, recent=frozenset())
    assert isinstance(over, Refused)
    assert over.reason is RejectReason.BUDGET_EXCEEDED
    batch = AlignedWindow(start, start + timedelta(days=1))
    reported = DeviceMark(5, start + timedelta(hours=2), batch.end, frozenset())
    again = Candidate(ok.envelope, ok.price, batch)
    refused = decide(reported, DaySpend(), again, recent=frozenset())
    assert isinstance(refused, Refused)
    assert refused.reason is RejectReason.DUPLICATE_WINDOW


def test_a_ledger_that_cannot_be_opened_is_a_configuration_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigurationError, match="device ledger"):
        DeviceLedger(blocker / "ledger.sqlite3", [PILOT])


_EPSILONS = st.sampled_from(
    [Decimal(0), Decimal("0.1"), Decimal("0.45"), Decimal("2.6"), Decimal(5)]
)
_CAPS = st.sampled_from([None, Decimal(4), Decimal(8), Decimal(16)])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_EPSILONS, _CAPS), max_size=40))
def test_no_charge_passes_the_strictest_cap_of_the_day_so_far(
    releases: list[tuple[Decimal, Decimal | None]],
) -> None:
    """Every charge admitted leaves the day within the strictest cap of the policies
    admitted so far (itself included); every refusal would have crossed it."""
    start = FIRST_WINDOW
    mark: DeviceMark | None = None
    spend = DaySpend()
    caps: list[Decimal] = []
    for n, (epsilon, cap) in enumerate(releases):
        if epsilon and cap is None:
            continue  # a policy known by hash only releases nothing priceable
        env = _candidate(n + 1, start + timedelta(hours=n)).envelope
        decision = decide(
            mark, spend, Candidate(env, EnvelopePrice(epsilon, cap), None), recent=frozenset()
        )
        strictest = min([*caps, cap] if cap is not None else caps, default=None)
        if isinstance(decision, Refused):
            assert decision.reason is RejectReason.BUDGET_EXCEEDED
            assert strictest is not None
            assert spend.spent + epsilon > strictest
            continue
        assert isinstance(decision, Admitted)
        assert decision.spend.spent == spend.spent + epsilon
        assert decision.spend.cap == strictest
        if epsilon:
            assert strictest is not None
            assert decision.spend.spent <= strictest
        mark, spend = decision.mark, decision.spend
        caps += [cap] if cap is not None else []


async def test_two_processes_sharing_the_ledger_file_share_the_budget(tmp_path: Path) -> None:
    """Replicas on one host sharing a state directory: one budget per device."""
    path = tmp_path / "shared" / "ledger.sqlite3"
    first, second = DeviceLedger(path, [PILOT]), DeviceLedger(path, [PILOT])
    device = Device("eu-test")
    items = [
        IngestedEnvelope(
            envelope=EnvelopeV1.model_validate(device.envelope()),
            received_at=NOW,
            key_fingerprint="a" * 64,
            assurance="software",
        )
        for _ in range(8)
    ]
    try:
        decisions = []
        for n, item in enumerate(items):  # alternating between the two replicas
            decisions += await (first if n % 2 else second).admit([item], NOW)
    finally:
        first.close()
        second.close()
    refused = [d.reason for d in decisions if isinstance(d, Refused)]
    assert refused == [RejectReason.BUDGET_EXCEEDED] * 2  # 6 x 2.6 fit in 16


async def test_an_admitted_envelope_id_cannot_be_reused_for_another_release(
    intake: EnvelopeIntake, key: PrivateKey, bus: InMemoryEnvelopeBus, ledger: DeviceLedger
) -> None:
    device = Device("eu-test")
    cheap = device.envelope(aggregates=[])  # releases nothing: costs nothing
    bus.fail_with = "kafka down"
    with pytest.raises(BusUnavailable):
        await intake.submit([device.item(key.public_key, cheap)])
    bus.fail_with = None
    # The "retry" keeps the id but releases more: judged afresh, not republished.
    richer = cheap | {"aggregates": [counter_aggregate()]}
    result = await intake.submit([device.item(key.public_key, richer)])
    assert _reasons(result) == ["sequence_not_increasing"]
    assert bus.published == []
    # The very same envelope is still a retry.
    assert (await intake.submit([device.item(key.public_key, cheap)])).accepted == 1
    assert ledger.spent(device.device_id, TODAY) == 0
