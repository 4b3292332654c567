"""A software-keyed device never releases a tier the attestation policy keeps for TPM
keys: it is withheld before the ledger is charged, counted, and the real ingest
verifier accepts everything the device does send."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from nacl.public import PrivateKey

from client import (
    EnvelopeSealer,
    FallbackKeyStore,
    MemoryTransport,
    SoftwareKeyStore,
    Telemetry,
    TelemetryConfig,
)
from client._drops import DropCounter
from client._envelope import build_envelope
from ingest import Accepted, EnvelopeVerifier, Rejected
from policies import CounterSignal, load_attestation_policy, release_epsilon
from schemas import (
    AppInfo,
    BatchResult,
    CounterAggregate,
    EnvelopeBatch,
    ItemResult,
    NoiseSpec,
    RejectReason,
    Tier,
    device_id_for,
)
from tests.client.conftest import POLICY, T0, FakeClock, MemoryIngest

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
# Epsilon of one window of the health and performance signals of the test policy.
# Each release costs its worst-case loss (policies.release_epsilon).
NON_CONTENT_EPSILON = float(sum(release_epsilon(s) for s in POLICY.signals.values()))


def _telemetry(
    tmp_path: Path, clock: FakeClock, handle: MemoryTransport, **kw: object
) -> Telemetry:
    return Telemetry(
        TelemetryConfig(
            app=AppInfo(name="demo-app", version="1.0"),
            region="eu-west",
            policy=WITH_CONTENT,
            ingest_public_key=kw.pop("ingest_public_key"),  # type: ignore[arg-type]
            transport=handle,
            state_dir=tmp_path / "state",
            clock=clock,
            mode="manual",
            retry_backoff=0.0,
            max_attempts=1,
            **kw,  # type: ignore[arg-type]
        )
    )


def test_the_packaged_policy_is_what_the_client_knows() -> None:
    config = TelemetryConfig(
        app=AppInfo(name="demo-app", version="1.0"),
        region="eu-west",
        ingest_public_key=bytes(32),
        endpoint="https://ingest.example",
        state_dir=Path("/nonexistent"),
    )
    assert config.software_tiers == load_attestation_policy().software_tiers
    assert Tier.CONTENT not in config.software_tiers


def test_content_is_withheld_uncharged_and_counted_with_a_software_key(
    tmp_path: Path, clock: FakeClock
) -> None:
    ingest = MemoryIngest()
    qw = _telemetry(
        tmp_path, clock, MemoryTransport(ingest.handle), ingest_public_key=ingest.public_key
    )
    for tier in Tier:
        qw.grant_consent(tier)
    qw.record_prompt("write to ann@example.com")
    qw.counter("app.starts").add(1)

    (window,) = qw.collect_with_truth(clock.advance(hours=1))
    envelope = window.envelope
    assert {a.tier for a in envelope.aggregates} == {Tier.HEALTH, Tier.PERFORMANCE}
    assert not any(t.signal == "prompt.personal_data" for t in window.truth)
    # Not a budget suppression: nothing about it in the envelope.
    assert "prompt.personal_data" not in envelope.suppressed
    assert set(envelope.consented_tiers) == set(Tier)
    # The ledger was charged for what was released, and for nothing else.
    today, lifetime = qw.privacy_spent()
    assert today == lifetime == NON_CONTENT_EPSILON
    assert qw.dropped() == {"tier_requires_tpm": 1}  # one withheld release per window

    qw.collect(clock.advance(hours=2))
    assert qw.dropped() == {"tier_requires_tpm": 3}
    assert qw.privacy_spent()[1] == 3 * NON_CONTENT_EPSILON
    assert qw.flush()
    assert len(ingest.envelopes) == 3
    qw.shutdown(carry_open_window=False)


def test_only_content_consented_sends_nothing_and_spends_nothing(
    tmp_path: Path, clock: FakeClock
) -> None:
    ingest = MemoryIngest()
    qw = _telemetry(
        tmp_path, clock, MemoryTransport(ingest.handle), ingest_public_key=ingest.public_key
    )
    qw.grant_consent(Tier.CONTENT)
    qw.record_prompt("call +44 20 7946 0958")

    assert qw.collect(clock.advance(hours=1)) == []
    assert qw.flush()
    assert ingest.envelopes == []
    assert qw.privacy_spent() == (0.0, 0.0)
    assert qw.dropped() == {"tier_requires_tpm": 1}
    qw.shutdown(carry_open_window=False)


def test_a_policy_accepting_software_content_releases_it(tmp_path: Path, clock: FakeClock) -> None:
    ingest = MemoryIngest()
    qw = _telemetry(
        tmp_path,
        clock,
        MemoryTransport(ingest.handle),
        ingest_public_key=ingest.public_key,
        software_tiers=["health", "performance", "content"],
    )
    qw.grant_consent(Tier.CONTENT)
    qw.record_prompt("write to ann@example.com")
    (envelope,) = qw.collect(clock.advance(hours=1))
    assert {a.tier for a in envelope.aggregates} == {Tier.CONTENT}
    assert qw.privacy_spent()[0] == CONTENT.epsilon
    assert "tier_requires_tpm" not in qw.dropped()
    qw.shutdown(carry_open_window=False)


def test_a_fallback_store_without_its_tpm_withholds_its_tpm_only_tiers(
    tmp_path: Path, clock: FakeClock
) -> None:
    def no_tpm() -> SoftwareKeyStore:
        raise OSError("no TPM on this machine")

    ingest = MemoryIngest()
    keys = FallbackKeyStore(
        no_tpm, SoftwareKeyStore(tmp_path / "sw"), tpm_only_tiers={"performance"}
    )
    qw = _telemetry(
        tmp_path,
        clock,
        MemoryTransport(ingest.handle),
        ingest_public_key=ingest.public_key,
        key_store=keys,
    )
    for tier in Tier:
        qw.grant_consent(tier)
    (envelope,) = qw.collect(clock.advance(hours=1))
    assert {a.tier for a in envelope.aggregates} == {Tier.HEALTH}
    # inference.requests, latency (performance) and prompt.personal_data (content);
    # and why the key is software.
    assert qw.dropped() == {"tier_requires_tpm": 3, "tpm_unavailable:OSError": 1}
    assert qw.privacy_spent()[0] == float(release_epsilon(POLICY.signals["app.starts"]))
    qw.shutdown(carry_open_window=False)


def test_the_ingest_accepts_everything_a_software_device_sends(
    tmp_path: Path, clock: FakeClock
) -> None:
    """Client and ingest read one policy: nothing the device sends is refused."""
    ingest_key = PrivateKey.generate()
    verifier = EnvelopeVerifier(
        ingest_key,
        region="eu-west",
        known_policy_hashes=[WITH_CONTENT.content_hash],
        software_tiers=[t.value for t in load_attestation_policy().software_tiers],
    )
    verdicts: list[Accepted | Rejected] = []

    def handle(batch: EnvelopeBatch) -> BatchResult:
        results = []
        for i, item in enumerate(batch.envelopes):
            verdict = verifier.verify(item, received_at=datetime.now(UTC))
            verdicts.append(verdict)
            if isinstance(verdict, Accepted):
                results.append(ItemResult(index=i, status="accepted"))
            else:
                results.append(ItemResult(index=i, status="rejected", reason=verdict.reason))
        rejected = sum(r.status == "rejected" for r in results)
        return BatchResult(accepted=len(results) - rejected, rejected=rejected, results=results)

    qw = _telemetry(
        tmp_path,
        clock,
        MemoryTransport(handle),
        ingest_public_key=bytes(ingest_key.public_key),
    )
    for tier in Tier:
        qw.grant_consent(tier)
    for _ in range(3):
        qw.record_prompt("ann@example.com")
        qw.counter("app.starts").add(1)
        qw.collect(clock.advance(hours=1))
    assert qw.flush()
    assert len(verdicts) == 3
    assert all(isinstance(v, Accepted) for v in verdicts), verdicts
    assert not any(k.startswith("rejected:") for k in qw.dropped())
    qw.shutdown(carry_open_window=False)

    # Defence in depth: content signed by a software key is still refused by the ingest.
    keys = SoftwareKeyStore(tmp_path / "other")
    content = CounterAggregate(
        signal="prompt.personal_data",
        tier=Tier.CONTENT,
        unit="{prompt}",
        attributes={"kind": "email"},
        value=1.0,
        noise=NoiseSpec(mechanism="discrete_laplace", scale=20.0, epsilon=0.5, lower=0, upper=5),
    )
    envelope = build_envelope(
        device_id=device_id_for(keys.public_key()),
        sequence=1,
        window_start=T0,
        window_end=T0.replace(hour=10),
        sent_at=T0.replace(hour=10),
        region="eu-west",
        policy_hash=WITH_CONTENT.content_hash,
        app=AppInfo(name="demo-app", version="1.0"),
        aggregates=[content],
        consent_hash="ab" * 32,
        consented_tiers=[Tier.CONTENT],
    )
    item = EnvelopeSealer(keys, bytes(ingest_key.public_key), DropCounter()).seal(envelope)
    verdict = verifier.verify(item, received_at=datetime.now(UTC))
    assert isinstance(verdict, Rejected)
    assert verdict.reason is RejectReason.SOFTWARE_KEY_REFUSED
