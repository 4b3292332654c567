"""Nothing whose budget was spent is deleted for an answer a retry or a fallback fixes.

Whole-batch 4xx answers (proxies, gateways, rate limits) keep the batch spooled and are
retried; a 413 splits the batch; an ingest that refuses the TPM key gets the envelope
again, signed by the software key; a TPM that cannot attest signs nothing. And with no
tier consented nothing leaves, spooled or in flight.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest
from nacl.public import PrivateKey

from client import (
    FallbackKeyStore,
    HttpTransport,
    MemoryTransport,
    SoftwareKeyStore,
    Telemetry,
    TelemetryConfig,
    TransportError,
)
from client._consent import ConsentStore
from client._keystore_fallback import current_assurance
from ingest import Accepted, EnvelopeVerifier, Rejected
from policies import CounterSignal, load_attestation_policy, release_epsilon
from schemas import (
    AppInfo,
    BatchResult,
    EnvelopeBatch,
    ItemResult,
    RejectReason,
    SignedDeletionRequest,
    Tier,
)
from tests.client.conftest import POLICY, FakeClock, MakeTelemetry, MemoryIngest
from tests.client.memory_keys import MemoryTpmKeyStore, ScriptedAttestor

CONTENT = CounterSignal(
    privacy_model="local",
    tier=Tier.CONTENT,
    attributes={"kind": ["email", "phone", "home_path", "credential", "card", "network_address"]},
    max_per_window=5,
    epsilon=0.5,
)
WITH_CONTENT = POLICY.model_copy(
    update={"signals": {**POLICY.signals, "prompt.personal_data": CONTENT}}
)


class ScriptedHttpIngest:
    """An httpx handler: answers each request with the next scripted status (then 202),
    and 413 to any batch of more than `max_items` items."""

    def __init__(self, ingest: MemoryIngest, statuses: list[int], max_items: int = 1_000):
        self.ingest = ingest
        self.statuses = statuses
        self.max_items = max_items
        self.batches: list[list[str]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        batch = EnvelopeBatch.model_validate_json(request.content)
        self.batches.append(batch.envelopes)
        if len(batch.envelopes) > self.max_items:
            return httpx.Response(413, text="request entity too large")
        status = self.statuses.pop(0) if self.statuses else 202
        if status != 202:
            return httpx.Response(status, text="a proxy said no")
        return httpx.Response(202, content=self.ingest.handle(batch).model_dump_json())


def _http(handler: ScriptedHttpIngest) -> HttpTransport:
    return HttpTransport(
        "https://ingest.test", client=httpx.Client(transport=httpx.MockTransport(handler))
    )


@pytest.mark.parametrize("status", [401, 403, 404, 408, 409, 429])
def test_a_whole_batch_4xx_keeps_the_batch_for_a_later_send(
    make_telemetry: MakeTelemetry, clock: FakeClock, ingest: MemoryIngest, status: int
) -> None:
    handler = ScriptedHttpIngest(ingest, [status, status])
    qw = make_telemetry(transport=_http(handler), max_attempts=2)
    (envelope,) = qw.collect(clock.advance(hours=1))
    assert not qw.flush()  # two attempts, both refused whole
    assert qw.pending == 1
    assert qw.dropped() == {}
    assert qw.flush()  # the proxy lets it through now
    assert [e.envelope_id for e in ingest.envelopes] == [envelope.envelope_id]
    assert qw.dropped() == {}


def test_a_413_splits_the_batch_and_sends_every_envelope_in_order(
    make_telemetry: MakeTelemetry, clock: FakeClock, ingest: MemoryIngest
) -> None:
    handler = ScriptedHttpIngest(ingest, [], max_items=2)
    qw = make_telemetry(transport=_http(handler))
    sent = qw.collect(clock.advance(hours=5))
    assert len(sent) == 5
    assert qw.flush()
    assert [e.envelope_id for e in ingest.envelopes] == [e.envelope_id for e in sent]
    # The fifth window releases less than the fourth (the daily cap suppresses part of
    # it), so it goes in a request of its own (`client._send_hold.budget_run`).
    assert [len(b) for b in handler.batches] == [4, 2, 2, 1]
    assert qw.dropped() == {}


def test_a_413_on_a_single_envelope_keeps_it(
    make_telemetry: MakeTelemetry, clock: FakeClock, ingest: MemoryIngest
) -> None:
    handler = ScriptedHttpIngest(ingest, [], max_items=0)
    qw = make_telemetry(transport=_http(handler), max_attempts=1)
    qw.collect(clock.advance(hours=1))
    assert not qw.flush()
    assert qw.pending == 1
    assert qw.dropped() == {}


def test_an_invalid_batch_is_dropped_and_counted(
    make_telemetry: MakeTelemetry, clock: FakeClock, ingest: MemoryIngest
) -> None:
    handler = ScriptedHttpIngest(ingest, [400])
    qw = make_telemetry(transport=_http(handler))
    qw.collect(clock.advance(hours=1))
    assert qw.flush()
    assert qw.pending == 0
    assert qw.dropped() == {"rejected:http_400": 1}


class VerifyingIngest:
    """The real ingest verifier behind a `MemoryTransport`, with no attested TPM key."""

    def __init__(self, clock: FakeClock) -> None:
        self.key = PrivateKey.generate()
        self.clock = clock
        self.verifier = EnvelopeVerifier(
            self.key,
            region="eu-west",
            known_policy_hashes=[WITH_CONTENT.content_hash],
            software_tiers=[t.value for t in load_attestation_policy().software_tiers],
        )
        self.verdicts: list[Accepted | Rejected] = []

    def handle(self, batch: EnvelopeBatch) -> BatchResult:
        results = []
        for i, item in enumerate(batch.envelopes):
            verdict = self.verifier.verify(item, received_at=self.clock())
            self.verdicts.append(verdict)
            if isinstance(verdict, Accepted):
                results.append(ItemResult(index=i, status="accepted"))
            else:
                # As the ingest's intake answers: the reason and its detail.
                results.append(
                    ItemResult(
                        index=i, status="rejected", reason=verdict.reason, detail=verdict.detail
                    )
                )
        rejected = sum(r.status == "rejected" for r in results)
        return BatchResult(accepted=len(results) - rejected, rejected=rejected, results=results)


def _tpm_telemetry(
    tmp_path: Path, clock: FakeClock, ingest: VerifyingIngest, keys: FallbackKeyStore
) -> Telemetry:
    return Telemetry(
        TelemetryConfig(
            app=AppInfo(name="demo-app", version="1.0"),
            region="eu-west",
            policy=WITH_CONTENT,
            ingest_public_key=bytes(ingest.key.public_key),
            transport=MemoryTransport(ingest.handle),
            state_dir=tmp_path / "state",
            key_store=keys,
            clock=clock,
            mode="manual",
            retry_backoff=0.0,
            max_attempts=2,
        )
    )


def test_an_unattested_tpm_key_falls_back_to_software_and_the_envelope_is_signed_again(
    tmp_path: Path, clock: FakeClock
) -> None:
    ingest = VerifyingIngest(clock)
    tpm = MemoryTpmKeyStore()
    keys = FallbackKeyStore(
        lambda: tpm, SoftwareKeyStore(tmp_path / "sw"), tpm_only_tiers={"content"}
    )
    qw = _tpm_telemetry(tmp_path, clock, ingest, keys)
    for tier in Tier:
        qw.grant_consent(tier)
    qw.counter("app.starts").add(1)
    qw.record_prompt("write to ann@example.com")
    (envelope,) = qw.collect(clock.advance(hours=1))
    assert Tier.CONTENT in {a.tier for a in envelope.aggregates}  # released as a TPM device

    assert qw.flush()
    first, second = ingest.verdicts
    assert isinstance(first, Rejected)
    assert first.reason is RejectReason.KEY_NOT_ATTESTED
    assert isinstance(second, Accepted)
    assert second.item.assurance == "software"
    # The same envelope, not deleted: signed again by the software key, without the
    # tier the attestation policy keeps for TPM keys.
    assert second.item.envelope.envelope_id == envelope.envelope_id
    assert {a.tier for a in second.item.envelope.aggregates} == {Tier.HEALTH, Tier.PERFORMANCE}
    assert second.item.envelope.device_id == qw.device_id
    assert qw.device_id.startswith("dev-")
    assert qw.pending == 0
    dropped = qw.dropped()
    assert dropped["tpm_unattested:key_not_attested"] == 1
    assert dropped["tier_requires_tpm"] == 1
    assert not any(k.startswith("rejected:") for k in dropped)
    # From now on the window is released for the software key: content withheld, uncharged.
    qw.collect(clock.advance(hours=1))
    assert qw.flush()
    assert isinstance(ingest.verdicts[-1], Accepted)
    assert qw.dropped()["tier_requires_tpm"] == 2
    assert qw.dropped()["tpm_unattested:key_not_attested"] == 1  # once per spell
    qw.shutdown(carry_open_window=False)


def test_a_tpm_that_cannot_attest_never_signs_and_says_why(
    tmp_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The shipped attestation policy trusts no EK root: every TPM device is here."""
    ingest = VerifyingIngest(clock)
    tpm = MemoryTpmKeyStore()
    keys = FallbackKeyStore(
        lambda: tpm, SoftwareKeyStore(tmp_path / "sw"), tpm_only_tiers={"content"}
    )
    attestor = ScriptedAttestor(succeeds=False, error="unknown_ek_root")
    keys.attach_attestor(attestor)
    qw = _tpm_telemetry(tmp_path, clock, ingest, keys)
    for tier in Tier:
        qw.grant_consent(tier)
    qw.record_prompt("write to ann@example.com")
    qw.counter("app.starts").add(1)
    (envelope,) = qw.collect(clock.advance(hours=1))
    # Known unattested before the window closed: content withheld before any charge.
    assert {a.tier for a in envelope.aggregates} == {Tier.HEALTH, Tier.PERFORMANCE}
    assert qw.flush()
    assert all(isinstance(v, Accepted) and v.item.assurance == "software" for v in ingest.verdicts)
    assert tpm.signatures == 0
    assert qw.dropped()["tpm_unattested:unknown_ek_root"] == 1
    assert "not attested (unknown_ek_root)" in caplog.text

    attestor.succeeds = True  # an operator added the EK root
    qw.collect(clock.advance(hours=1))
    assert current_assurance(keys) == "tpm"
    assert qw.device_id == tpm.device_id
    qw.shutdown(carry_open_window=False)


def test_spooled_envelopes_do_not_leave_after_every_tier_is_revoked_mid_send(
    make_telemetry: MakeTelemetry, clock: FakeClock, ingest: MemoryIngest
) -> None:
    """The revocation lands while a batch is in flight and the send fails: the batch
    comes back to the spool and must not leave, not even emptied."""
    qw: Telemetry | None = None
    calls = 0

    def handler(batch: EnvelopeBatch) -> BatchResult:
        nonlocal calls
        calls += 1
        if calls == 1:
            assert qw is not None
            qw.revoke_consent(Tier.HEALTH)
            qw.revoke_consent(Tier.PERFORMANCE)
            raise TransportError("connection reset")
        return ingest.handle(batch)

    qw = make_telemetry(transport=MemoryTransport(handler, lambda _request: None))
    qw.counter("app.starts").add(1)
    qw.collect(clock.advance(hours=2))
    assert qw.pending == 2
    assert qw.flush()
    assert ingest.envelopes == []
    assert qw.pending == 0
    assert qw.dropped()["consent_revoked"] == 2


def test_spooled_envelopes_of_a_revoked_tier_do_not_leave_after_a_restart(
    tmp_path: Path, make_telemetry: MakeTelemetry, clock: FakeClock, ingest: MemoryIngest
) -> None:
    """A revocation recorded but whose purge of the spool a crash cut short."""

    def down(_batch: EnvelopeBatch) -> BatchResult:
        raise TransportError("offline")

    state = tmp_path / "crashed"
    qw = make_telemetry(transport=MemoryTransport(down), state_dir=state, max_attempts=1)
    qw.counter("app.starts").add(1)
    qw.collect(clock.advance(hours=1))
    assert qw.pending == 1
    qw.shutdown(carry_open_window=False, timeout=0.1)
    # The consent file says "revoked"; the spool was never purged.
    consent = ConsentStore(
        state / "consent.json", SoftwareKeyStore(state).sign, POLICY, clock=clock
    )
    consent.revoke(Tier.HEALTH)
    consent.revoke(Tier.PERFORMANCE)

    again = make_telemetry(state_dir=state, consent=())
    assert again.pending == 1
    assert again.flush()
    assert ingest.envelopes == []
    assert again.pending == 0
    assert again.dropped()["consent_revoked"] == 1


def test_the_shutdown_sender_starts_no_batch_once_shutdown_has_returned(
    make_telemetry: MakeTelemetry, clock: FakeClock, ingest: MemoryIngest
) -> None:
    """A deletion request is on a slow wire when `shutdown` returns: the envelope
    behind it stays in the spool for the next run (which may purge it), and does not
    leave from this run's memory afterwards."""
    started: list[float] = []

    def handler(batch: EnvelopeBatch) -> BatchResult:
        started.append(time.monotonic())
        return ingest.handle(batch)

    def slow_deletion(_request: SignedDeletionRequest) -> None:
        time.sleep(1.0)  # still on the wire when `shutdown` returns

    qw = make_telemetry(transport=MemoryTransport(handler, slow_deletion))
    qw.counter("app.starts").add(1)
    qw.collect(clock.advance(hours=1))
    qw.revoke_consent(Tier.PERFORMANCE)  # a deletion request, sent before envelopes
    assert qw.pending == 1
    qw.shutdown(timeout=0.2)
    for thread in threading.enumerate():
        if thread.name == "quietwire-shutdown":
            thread.join(timeout=5.0)  # its deletion finished: it started nothing after
    assert started == []
    assert ingest.envelopes == []


def test_in_background_mode_the_worker_purges_a_revoked_tier_before_it_sends(
    make_telemetry: MakeTelemetry, clock: FakeClock, ingest: MemoryIngest
) -> None:
    online = False

    def handler(batch: EnvelopeBatch) -> BatchResult:
        if not online:
            raise TransportError("offline")
        return ingest.handle(batch)

    qw = make_telemetry(transport=MemoryTransport(handler, lambda _r: None), mode="background")
    qw.counter("app.starts").add(1)
    qw.counter("inference.requests").add(1, route="local", model="a@1")
    clock.advance(hours=3)
    assert not qw.flush(timeout=30)  # released, spooled, not sent
    assert qw.pending == 3
    qw.revoke_consent(Tier.PERFORMANCE)
    online = True
    assert qw.flush(timeout=30)
    assert len(ingest.envelopes) == 3
    tiers = {a.tier for e in ingest.envelopes for a in e.aggregates}
    assert tiers == {Tier.HEALTH}
    assert all(e.consented_tiers == [Tier.HEALTH] for e in ingest.envelopes)


def test_a_software_signature_refused_for_a_tier_teaches_the_client_to_withhold_it(
    tmp_path: Path, clock: FakeClock
) -> None:
    """The client was told software keys may send content; the ingest's policy says no."""
    ingest = VerifyingIngest(clock)
    qw = Telemetry(
        TelemetryConfig(
            app=AppInfo(name="demo-app", version="1.0"),
            region="eu-west",
            policy=WITH_CONTENT,
            ingest_public_key=bytes(ingest.key.public_key),
            transport=MemoryTransport(ingest.handle),
            state_dir=tmp_path / "state",
            clock=clock,
            mode="manual",
            retry_backoff=0.0,
            software_tiers=list(Tier),
        )
    )
    for tier in Tier:
        qw.grant_consent(tier)
    qw.counter("app.starts").add(1)
    qw.record_prompt("write to ann@example.com")
    (envelope,) = qw.collect(clock.advance(hours=1))
    assert Tier.CONTENT in {a.tier for a in envelope.aggregates}
    assert qw.flush()
    first, second = ingest.verdicts
    assert isinstance(first, Rejected)
    assert first.reason is RejectReason.SOFTWARE_KEY_REFUSED
    assert isinstance(second, Accepted)
    assert second.item.envelope.envelope_id == envelope.envelope_id
    assert {a.tier for a in second.item.envelope.aggregates} == {Tier.HEALTH, Tier.PERFORMANCE}
    assert not any(k.startswith("rejected:") for k in qw.dropped())
    spent = qw.privacy_spent()[0]
    # The next window withholds content before charging it.
    qw.record_prompt("write to bob@example.com")
    qw.collect(clock.advance(hours=1))
    assert qw.flush()
    assert isinstance(ingest.verdicts[-1], Accepted)
    assert qw.dropped()["tier_requires_tpm"] == 2  # stripped once, withheld once
    # Charged for health and performance only: the first window's charge minus content's.
    content = float(release_epsilon(CONTENT))
    assert qw.privacy_spent()[0] - spent == pytest.approx(spent - content)
    qw.shutdown(carry_open_window=False)


def test_no_batch_starts_once_shutdown_has_returned_on_the_worker_or_in_flush(
    tmp_path: Path, make_telemetry: MakeTelemetry, clock: FakeClock, ingest: MemoryIngest
) -> None:
    """Review s18b H2: `shutdown` returns while the worker's round is still sending (a
    deletion request on a slow wire). Neither that round nor a `flush` afterwards
    starts a batch: the next run owns the spool."""
    state = tmp_path / "state"

    def down(_batch: EnvelopeBatch) -> BatchResult:
        raise TransportError("offline")

    first = make_telemetry(transport=MemoryTransport(down, down), state_dir=state)
    first.counter("app.starts").add(1)
    first.collect(clock.advance(hours=1))
    first.revoke_consent(Tier.PERFORMANCE)  # its deletion request waits in the spool
    first.shutdown(carry_open_window=False, timeout=0.1)

    started: list[float] = []
    on_wire, release = threading.Event(), threading.Event()

    def handler(batch: EnvelopeBatch) -> BatchResult:
        started.append(time.monotonic())
        return ingest.handle(batch)

    def slow_deletion(_request: SignedDeletionRequest) -> None:
        on_wire.set()
        release.wait(10.0)

    qw = make_telemetry(
        transport=MemoryTransport(handler, slow_deletion),
        state_dir=state,
        consent=(Tier.HEALTH,),
        mode="background",
    )
    assert qw.pending == 1
    assert on_wire.wait(10.0)  # the worker's round is sending the deletion request
    qw.shutdown(timeout=0.2)
    release.set()
    worker = qw._worker
    assert worker is not None
    for _ in range(200):
        if not worker.is_alive():
            break
        time.sleep(0.05)
    for thread in threading.enumerate():
        if thread.name == "quietwire-shutdown":
            thread.join(timeout=5.0)
    assert started == []  # the worker's round started no batch after its deletion
    assert not qw.flush(timeout=1.0)  # nor does `flush`: the envelope is still pending
    assert started == []
    assert ingest.envelopes == []
