"""The privacy engine through the real client: consent gating, revocation, the budget."""

from __future__ import annotations

import base64
import math
from collections import defaultdict
from datetime import timedelta
from pathlib import Path

import pytest
from nacl.signing import VerifyKey

from client import ConfigError, MemoryTransport, Telemetry, TelemetryConfig
from client._loss import release_loss
from policies import CounterSignal, Policy, load_policy
from schemas import (
    AppInfo,
    DeletionReceipt,
    DeletionRequestV1,
    EnvelopeV1,
    SignedDeletionRequest,
    Tier,
)
from tests.client.conftest import POLICY, T0, FakeClock, MakeTelemetry, MemoryIngest

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


def _tiers(envelope: EnvelopeV1) -> set[Tier]:
    return {a.tier for a in envelope.aggregates}


def _spent_per_day(envelopes: list[EnvelopeV1], policy: Policy = POLICY) -> dict[str, float]:
    """Worst-case epsilon of the released aggregates, per UTC day of their window: each
    signal's release in an envelope (its cells and totals together) costs the loss
    OpenDP's own privacy maps give for their composition."""
    per_day: dict[str, float] = defaultdict(float)
    for envelope in envelopes:
        released = {a.signal for a in envelope.aggregates}
        losses = [release_loss(policy.signals[s], policy.privacy.mechanisms) for s in released]
        per_day[envelope.window_start.date().isoformat()] += math.fsum(losses)
    return dict(per_day)


# -- consent gating -------------------------------------------------------------------


def test_nothing_is_built_or_sent_without_consent(make_telemetry: MakeTelemetry, clock, ingest):
    qw = make_telemetry(consent=())
    qw.counter("app.starts").add(1)
    assert qw.collect(clock.advance(hours=3)) == []
    assert qw.flush()
    assert ingest.envelopes == []
    assert qw.privacy_spent() == (0.0, 0.0)


def test_each_tier_is_released_only_with_its_own_consent(
    make_telemetry: MakeTelemetry, clock, ingest
) -> None:
    qw = make_telemetry(consent=(Tier.HEALTH,))
    qw.counter("app.starts").add(1)
    qw.counter("inference.requests").add(3, route="local", model="a@1")
    (envelope,) = qw.collect(clock.advance(hours=1))
    assert _tiers(envelope) == {Tier.HEALTH}
    assert envelope.consented_tiers == [Tier.HEALTH]
    assert envelope.consent_hash is not None
    # app.starts only, nothing for the rest: a one-cell counter of epsilon 1 (noise for
    # a diameter of 2 x bound; its values are at most bound apart) loses 0.5.
    assert qw.privacy_spent()[0] == 0.5


def test_content_needs_its_own_grant(tmp_path: Path, ingest: MemoryIngest, clock) -> None:
    # As under an attestation policy that accepts content from software keys (the
    # packaged one does not: see test_tier_assurance.py).
    qw = _telemetry(tmp_path, ingest, clock, WITH_CONTENT, software_tiers=set(Tier))
    qw.grant_consent(Tier.HEALTH)
    qw.grant_consent(Tier.PERFORMANCE)
    assert qw.record_prompt("mail me at ann@example.com") == "mail me at <EMAIL>"
    (envelope,) = qw.collect(clock.advance(hours=1))
    assert Tier.CONTENT not in _tiers(envelope)
    assert Tier.CONTENT not in envelope.consented_tiers

    qw.grant_consent("content")
    qw.record_prompt("call +44 20 7946 0958 or ann@example.com, ann@example.com")
    (window,) = qw.collect_with_truth(clock.advance(hours=1))
    assert Tier.CONTENT in _tiers(window.envelope)
    counted = {
        t.attributes["kind"]: t.value for t in window.truth if t.signal == "prompt.personal_data"
    }
    # Each kind counts once per prompt, whatever the number of findings.
    assert counted["email"] == 1
    assert counted["phone"] == 1
    assert counted["card"] == 0
    qw.shutdown(carry_open_window=False)


def test_data_recorded_before_the_grant_is_never_released(
    make_telemetry: MakeTelemetry, clock
) -> None:
    qw = make_telemetry(consent=(Tier.PERFORMANCE,))
    qw.counter("app.starts").add(2)  # health: not consented yet
    qw.grant_consent(Tier.HEALTH)
    qw.counter("app.starts").add(1)
    (window,) = qw.collect_with_truth(clock.advance(hours=1))
    starts = [t for t in window.truth if t.signal == "app.starts"]
    assert [t.value for t in starts] == [1]  # type: ignore[union-attr]


def test_an_unknown_tier_is_a_clear_error(make_telemetry: MakeTelemetry) -> None:
    qw = make_telemetry()
    with pytest.raises(ConfigError, match="unknown tier 'diagnostics'"):
        qw.grant_consent("diagnostics")


# -- revocation -----------------------------------------------------------------------


def test_revoking_purges_the_tier_everywhere_and_sends_a_deletion_request(
    tmp_path: Path, clock: FakeClock
) -> None:
    ingest = MemoryIngest()
    requests: list[SignedDeletionRequest] = []
    online = False

    def deletion(request: SignedDeletionRequest) -> DeletionReceipt:
        requests.append(request)
        return DeletionReceipt(
            request_id=DeletionRequestV1.model_validate_json(request.payload).request_id
        )

    def send(batch):  # offline at first: envelopes stay in the spool
        if not online:
            from client import TransportError

            raise TransportError("offline")
        return ingest.handle(batch)

    qw = _telemetry(tmp_path, ingest, clock, POLICY, MemoryTransport(send, deletion))
    qw.grant_consent(Tier.HEALTH)
    qw.grant_consent(Tier.PERFORMANCE)
    qw.counter("inference.requests").add(4, route="local", model="a@1")
    qw.collect(clock.advance(hours=2))  # two windows, pending (offline)
    assert not qw.flush()
    assert qw.pending == 2
    qw.counter("inference.requests").add(5, route="edge", model="b@2")  # open window

    qw.revoke_consent(Tier.PERFORMANCE)
    assert qw.consented_tiers() == [Tier.HEALTH]
    online = True
    assert qw.flush()
    # The pending envelopes went out without a trace of the revoked tier.
    assert len(ingest.envelopes) == 2
    for envelope in ingest.envelopes:
        assert _tiers(envelope) == {Tier.HEALTH}
        assert envelope.consented_tiers == [Tier.HEALTH]
        assert "inference.requests" not in envelope.suppressed
    # The open window's data of the tier was discarded too.
    (window,) = qw.collect_with_truth(clock.advance(hours=1))
    assert not any(t.signal == "inference.requests" for t in window.truth)
    # One deletion request, signed by the device key, for the tier.
    (signed,) = requests
    VerifyKey(signed.public_key).verify(signed.payload, signed.signature)
    request = DeletionRequestV1.model_validate_json(signed.payload)
    assert (request.tier, request.device_id, request.region) == (
        Tier.PERFORMANCE,
        qw.device_id,
        "eu-west",
    )
    assert base64.b64encode(signed.public_key)  # raw key bytes round-trip
    # Revoking again records nothing new and sends no second request.
    qw.revoke_consent(Tier.PERFORMANCE)
    assert qw.flush()
    assert len(requests) == 1
    qw.shutdown(carry_open_window=False)


def test_a_deletion_request_survives_a_restart_while_offline(tmp_path: Path, clock) -> None:
    ingest = MemoryIngest()
    first = _telemetry(tmp_path, ingest, clock, POLICY)  # no deletion handler: stays pending
    first.grant_consent(Tier.HEALTH)
    first.revoke_consent(Tier.HEALTH)
    assert not first.flush()
    first.shutdown(carry_open_window=False, timeout=0.1)

    received: list[SignedDeletionRequest] = []

    def deletion(request: SignedDeletionRequest) -> None:
        received.append(request)  # refused for good (None): forgotten, counted

    second = _telemetry(tmp_path, ingest, clock, POLICY, MemoryTransport(ingest.handle, deletion))
    assert second.flush()
    assert len(received) == 1
    assert second.dropped() == {"rejected:deletion_request": 1}
    second.shutdown(carry_open_window=False)


def test_a_failing_deletion_transport_neither_raises_nor_holds_envelopes_back(
    tmp_path: Path, clock
) -> None:
    ingest = MemoryIngest()

    def broken(request: SignedDeletionRequest) -> None:
        raise RuntimeError("a bug in the app's transport")

    qw = _telemetry(tmp_path, ingest, clock, POLICY, MemoryTransport(ingest.handle, broken))
    qw.grant_consent(Tier.HEALTH)
    qw.grant_consent(Tier.PERFORMANCE)
    qw.revoke_consent(Tier.PERFORMANCE)
    qw.collect(clock.advance(hours=1))
    assert not qw.flush()  # the deletion request stays pending, to be retried
    assert len(ingest.envelopes) == 1  # the envelope went all the same
    qw.shutdown(carry_open_window=False, timeout=0.1)


# -- the privacy budget -----------------------------------------------------------------


def test_a_device_cannot_exceed_its_daily_cap_whatever_it_records(
    tmp_path: Path, ingest: MemoryIngest, clock: FakeClock
) -> None:
    """Thirty restarts in ten hours, recording far beyond every bound: the daily cap
    stops the hourly releases (a restart adds none: the open window is carried)."""
    cap = POLICY.privacy.daily_epsilon
    state = tmp_path / "device"
    for _restart in range(30):
        qw = _telemetry(tmp_path, ingest, clock, POLICY, state_dir=state)
        qw.grant_consent(Tier.HEALTH)
        qw.grant_consent(Tier.PERFORMANCE)
        for _ in range(200):  # far beyond every contribution bound
            qw.counter("app.starts").add(7)
            qw.counter("inference.requests").add(9, route="cloud", model="b@2")
            qw.histogram("latency").record(99.0, route="local")
        qw.collect(clock.advance(minutes=20))
        assert qw.privacy_spent()[0] <= cap
        qw.shutdown()  # carries the open window: released once, by a later run
    envelopes = ingest.envelopes
    assert len({e.window_start.date() for e in envelopes}) == 1  # all within one day
    spent = _spent_per_day(envelopes)
    assert all(total <= cap + 1e-9 for total in spent.values()), spent
    assert max(spent.values()) >= cap - 1.0  # the budget was used, then cut off
    # Every withheld release was reported, per signal.
    withheld = sum(n for e in envelopes for n in e.suppressed.values())
    assert withheld > 0
    assert any(not e.aggregates and e.suppressed for e in envelopes)


def test_the_default_policy_runs_for_days_without_suppression(tmp_path: Path, clock) -> None:
    """Every tier consented, one window a day: exactly the daily cap, every day.

    Every tier is sendable here (a TPM-keyed device, or a policy accepting software
    keys for content); a software key under the packaged policy spends less.
    """
    policy = load_policy()
    ingest = MemoryIngest()
    clock.now = T0.replace(hour=0)
    qw = _telemetry(tmp_path, ingest, clock, policy, software_tiers=set(Tier))
    for tier in Tier:
        qw.grant_consent(tier)
    days = 5
    for _day in range(days):
        qw.counter("inference.requests").add(3, route="local", model="qwen2.5-7b@1.0")
        qw.collect(clock.advance(hours=24))
        assert qw.privacy_spent(clock.now - timedelta(hours=1))[0] == pytest.approx(
            policy.privacy.daily_epsilon
        )
    assert qw.flush()
    assert len(ingest.envelopes) == days
    assert all(not e.suppressed for e in ingest.envelopes)
    for envelope in ingest.envelopes:
        # The aggregate signals leave as Prio3 reports, one per task; content locally.
        assert {r.task.partition("/")[0] for r in envelope.reports} == set(policy.aggregate_signals)
        assert {a.signal for a in envelope.aggregates} == {"prompt.personal_data"}
    qw.shutdown(carry_open_window=False)


def _telemetry(
    tmp_path: Path,
    ingest: MemoryIngest,
    clock: FakeClock,
    policy: object,
    transport: MemoryTransport | None = None,
    state_dir: Path | None = None,
    **kw: object,
) -> Telemetry:
    return Telemetry(
        TelemetryConfig(
            app=AppInfo(name="demo-app", version="1.0"),
            region="eu-west",
            policy=policy,
            ingest_public_key=ingest.public_key,
            transport=transport or MemoryTransport(ingest.handle),
            state_dir=state_dir or tmp_path / "state",
            clock=clock,
            mode="manual",
            retry_backoff=0.0,
            max_attempts=1,
            **kw,  # type: ignore[arg-type]
        )
    )


def test_with_no_tier_consented_no_envelope_leaves_spooled_ones_included(
    tmp_path: Path, clock
) -> None:
    ingest = MemoryIngest()
    transport = MemoryTransport(ingest.handle, lambda _request: None)
    qw = _telemetry(tmp_path, ingest, clock, POLICY, transport=transport)
    qw.grant_consent(Tier.HEALTH)
    qw.grant_consent(Tier.PERFORMANCE)
    qw.counter("inference.requests").add(2, route="local", model="a@1")
    qw.collect(clock.advance(hours=1))
    qw.collect(clock.advance(hours=1))
    assert qw.pending == 2  # spooled, not sent yet (manual mode)
    qw.revoke_consent(Tier.PERFORMANCE)
    assert qw.pending == 2  # app.starts (health) still there
    qw.revoke_consent(Tier.HEALTH)
    assert qw.pending == 0
    assert qw.dropped()["consent_revoked"] == 2
    assert qw.flush()
    assert ingest.envelopes == []  # deletion requests only, no envelope
