"""Every drop is counted by reason and reported to the ingest later, in an envelope."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from nacl.public import PrivateKey

from client import MemoryTransport, Telemetry, TelemetryConfig, TransportError
from client._client_report import wire_reason
from ingest import Accepted, EnvelopeVerifier, Rejected
from schemas import AppInfo, BatchResult, ClientReport, EnvelopeBatch, ItemResult, Tier
from tests.client.conftest import POLICY, T0, FakeClock, MakeTelemetry, MemoryIngest


def test_the_next_envelope_reports_what_was_dropped_since_the_last_report(
    make_telemetry: MakeTelemetry, clock: FakeClock, ingest: MemoryIngest
) -> None:
    qw = make_telemetry()
    requests = qw.counter("inference.requests")
    requests.add(-1)  # negative_amount
    requests.add(1, route="local", user="ann")  # undeclared_label
    qw.record("no.such.signal", 1)  # unknown_signal
    qw.record_prompt("x" * 100_000)  # prompt_too_long: about the user's text, never sent
    qw.collect(clock.advance(hours=2))
    assert qw.flush()
    first, second = ingest.envelopes
    assert first.client_report == ClientReport(
        counts={"negative_amount": 1, "undeclared_label": 1, "unknown_signal": 1}
    )
    assert second.client_report is None  # delivered once

    requests.add(-5)
    requests.add(-5)
    qw.collect(clock.advance(hours=1))
    assert qw.flush()
    third = ingest.envelopes[-1]
    assert third.client_report is not None
    assert third.client_report.counts == {"negative_amount": 2}
    assert third.client_report.since == T0 + timedelta(hours=2)  # the first's delivery
    assert qw.dropped()["prompt_too_long"] == 1


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

    qw = make_telemetry(transport=MemoryTransport(flaky), max_attempts=1)
    qw.counter("inference.requests").add(-1)
    qw.collect(clock.advance(hours=1))
    assert not qw.flush()
    assert qw.flush()
    (envelope,) = ingest.envelopes
    assert envelope.client_report == ClientReport(counts={"negative_amount": 1})


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
            transport=MemoryTransport(handle),
            state_dir=tmp_path / "state",
            clock=clock,
            mode="manual",
        )
    )
    qw.grant_consent(Tier.HEALTH)
    qw.counter("inference.requests").add(-1)
    qw.collect(clock.advance(hours=1))
    assert qw.flush()
    (verdict,) = verdicts
    assert isinstance(verdict, Accepted), verdict
    assert verdict.item.envelope.client_report == ClientReport(counts={"negative_amount": 1})
    qw.shutdown(release_open_window=False)
