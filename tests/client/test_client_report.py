"""Every drop is counted by reason; the operational ones are reported to the ingest later,
in an envelope. Drops counted per measurement never leave the device: their counts
follow the user's activity."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from nacl.public import PrivateKey

from client import MemoryTransport, Telemetry, TelemetryConfig, TransportError
from client._client_report import is_reported, wire_reason
from client._drops import DropReason
from ingest import Accepted, EnvelopeVerifier, Rejected
from schemas import (
    AppInfo,
    BatchResult,
    ClientReport,
    EnvelopeBatch,
    ItemResult,
    RejectReason,
    Tier,
)
from tests.client.conftest import POLICY, FakeClock, MakeTelemetry, MemoryIngest

Handler = Callable[[EnvelopeBatch], BatchResult]


class _Refusing:
    """A transport handler that refuses every item of a batch when told to (unknown_policy,
    counted by the client as `rejected:unknown_policy`), the first one included, and
    hands the others to `accept`."""

    def __init__(self, accept: Handler) -> None:
        self.accept = accept
        self.refuse_next = True

    def __call__(self, batch: EnvelopeBatch) -> BatchResult:
        if not self.refuse_next:
            return self.accept(batch)
        self.refuse_next = False
        results = [
            ItemResult(
                index=i, status="rejected", reason=RejectReason.UNKNOWN_POLICY, detail="test"
            )
            for i in range(len(batch.envelopes))
        ]
        return BatchResult(accepted=0, rejected=len(results), results=results)


def test_the_next_envelope_reports_operational_drops_since_the_last_report(
    make_telemetry: MakeTelemetry, clock: FakeClock, ingest: MemoryIngest
) -> None:
    refusing = _Refusing(ingest.handle)
    qw = make_telemetry(transport=MemoryTransport(refusing))
    qw.counter("inference.requests").add(1, route="local")
    qw.collect(clock.advance(hours=1))
    qw.flush()  # the window's envelope refused: rejected:unknown_policy
    assert qw.dropped()["rejected:unknown_policy"] == 1

    qw.collect(clock.advance(hours=2))  # two windows: two envelopes in one batch
    assert qw.flush()
    delivered_at = clock()
    first, second = ingest.envelopes
    assert first.client_report == ClientReport(counts={"rejected:unknown_policy": 1})
    assert second.client_report is None  # delivered once

    qw.collect(clock.advance(hours=1))
    assert qw.flush()
    assert all(e.client_report is None for e in ingest.envelopes[2:])  # nothing new

    qw.collect(clock.advance(hours=1))
    refusing.refuse_next = True  # the fourth window refused ...
    qw.flush()
    qw.collect(clock.advance(hours=1))
    assert qw.flush()  # ... and reported by the fifth, since the first report's delivery
    assert ingest.envelopes[-1].client_report == ClientReport(
        since=delivered_at, counts={"rejected:unknown_policy": 1}
    )


def test_drops_counted_per_measurement_never_leave_the_device(
    make_telemetry: MakeTelemetry, clock: FakeClock, ingest: MemoryIngest
) -> None:
    qw = make_telemetry()
    requests = qw.counter("inference.requests")
    requests.add(-1)  # negative_amount
    requests.add(1, route="local", user="ann")  # undeclared_label
    qw.record("no.such.signal", 1)  # unknown_signal
    qw.record_prompt("x" * 100_000)  # prompt_too_long: about the user's text
    qw.collect(clock.advance(hours=2))
    assert qw.flush()
    assert ingest.envelopes
    assert all(e.client_report is None for e in ingest.envelopes)
    dropped = qw.dropped()  # the app still sees every one of them, locally
    assert dropped["negative_amount"] == 1
    assert dropped["undeclared_label"] == 1
    assert dropped["unknown_signal"] == 1
    assert dropped["prompt_too_long"] == 1


_PER_MEASUREMENT = [
    DropReason.NEGATIVE_AMOUNT,
    DropReason.NOT_FINITE,
    DropReason.WRONG_TYPE,
    DropReason.UNKNOWN_SIGNAL,
    DropReason.UNDECLARED_LABEL,
    DropReason.NO_FINGERPRINT_KEY,
    DropReason.ATTRIBUTES_TOO_LARGE,
    DropReason.OTEL_UNDECLARED_INSTRUMENT,
    DropReason.OTEL_UNDECLARED_ATTRIBUTE,
    DropReason.PROMPT_TOO_LONG,
    DropReason.PROMPT_QUEUE_FULL,
    DropReason.PROMPT_DISCARDED,
    DropReason.STATE_LOADING,
    DropReason.CARRIED_DISCARDED,
    DropReason.OPEN_WINDOW_DISCARDED,
]


@pytest.mark.parametrize("reason", _PER_MEASUREMENT)
def test_a_reason_that_follows_the_users_activity_is_not_reported(reason: DropReason) -> None:
    assert not is_reported(reason)


@pytest.mark.parametrize(
    "reason",
    [
        "rejected:clock_skew",
        "deferred:budget_exceeded",
        "held:clock_ahead",
        "expired:clock_ahead",
        "tpm_failed:TSS2_Exception",
        DropReason.SPOOL_CORRUPT,
        DropReason.SEND_FAILED,
        DropReason.TIER_REQUIRES_TPM,
        DropReason.WINDOW_ALREADY_RELEASED,
    ],
)
def test_operational_reasons_are_reported(reason: str) -> None:
    assert is_reported(reason)


def test_a_reason_nobody_classified_stays_on_the_device() -> None:
    assert not is_reported("something_new")
    assert not is_reported("rejected")  # the family needs its prefix


def test_a_report_whose_envelope_was_not_accepted_is_sent_again(
    make_telemetry: MakeTelemetry, clock: FakeClock, ingest: MemoryIngest
) -> None:
    attempts = 0

    def flaky(batch: EnvelopeBatch) -> BatchResult:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise TransportError("connection reset")
        return ingest.handle(batch)

    qw = make_telemetry(transport=MemoryTransport(_Refusing(flaky)), max_attempts=1)
    qw.collect(clock.advance(hours=1))
    qw.flush()  # refused: rejected:unknown_policy
    qw.collect(clock.advance(hours=1))
    assert not qw.flush()  # the connection drops: the report is not delivered
    assert qw.flush()
    first = ingest.envelopes[0]
    assert first.client_report == ClientReport(counts={"rejected:unknown_policy": 1})


def test_free_form_reasons_are_reported_by_their_prefix() -> None:
    assert wire_reason("rejected:clock_skew") == "rejected:clock_skew"
    assert wire_reason("tpm_failed:TSS2_Exception") == "tpm_failed:TSS2_Exception"
    assert wire_reason("tpm_unattested:ConnectError('no route to 10.0.0.7')") == (
        "tpm_unattested:other"
    )
    assert wire_reason("Weird Reason") == "other"


def test_the_ingest_accepts_an_envelope_with_a_client_report(
    tmp_path: Path, clock: FakeClock
) -> None:
    key = PrivateKey.generate()
    verifier = EnvelopeVerifier(
        key, region="eu-west", known_policy_hashes=[POLICY.content_hash], software_tiers=None
    )
    verdicts: list[Accepted | Rejected] = []

    def handle(batch: EnvelopeBatch) -> BatchResult:
        verdicts.extend(verifier.verify(i, received_at=clock()) for i in batch.envelopes)
        results = [ItemResult(index=i, status="accepted") for i in range(len(batch.envelopes))]
        return BatchResult(accepted=len(results), rejected=0, results=results)

    qw = Telemetry(
        TelemetryConfig(
            app=AppInfo(name="demo-app", version="1.0"),
            region="eu-west",
            policy=POLICY,
            ingest_public_key=bytes(key.public_key),
            transport=MemoryTransport(_Refusing(handle)),
            state_dir=tmp_path / "state",
            clock=clock,
            mode="manual",
        )
    )
    qw.grant_consent(Tier.HEALTH)
    qw.collect(clock.advance(hours=1))
    qw.flush()  # refused: rejected:unknown_policy
    qw.collect(clock.advance(hours=1))
    assert qw.flush()
    (verdict,) = verdicts
    assert isinstance(verdict, Accepted), verdict
    assert verdict.item.envelope.client_report == ClientReport(
        counts={"rejected:unknown_policy": 1}
    )
    qw.shutdown(carry_open_window=False)
