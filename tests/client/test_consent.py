"""Consent: opt-in per tier, signed and durable decisions, and the hash envelopes carry."""

from __future__ import annotations

import itertools
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from client._consent import (
    ConsentError,
    ConsentRecord,
    ConsentStore,
    SignedConsentRecord,
    consent_hash_of,
)
from policies import Policy, load_policy
from schemas import Tier

POLICY = load_policy()
KEY = SigningKey(b"\x07" * 32)
START = datetime(2026, 11, 27, 12, tzinfo=UTC)


class _Clock:
    def __init__(self) -> None:
        self.now = START
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            self.now += timedelta(seconds=1)
            return self.now


def _sign(data: bytes) -> bytes:
    return bytes(KEY.sign(data).signature)


def _store(path: Path, policy: Policy = POLICY) -> ConsentStore:
    return ConsentStore(path, _sign, policy, clock=_Clock())


def _with_notice(version: int) -> Policy:
    data = POLICY.model_dump()
    data["consent"]["notice_version"] = version
    return Policy.model_validate(data)


def test_nothing_is_allowed_before_consent(tmp_path: Path) -> None:
    store = _store(tmp_path / "consent.json")
    assert not any(store.allows(tier) for tier in Tier)
    assert store.records() == []
    assert not (tmp_path / "consent.json").exists()


def test_each_tier_needs_its_own_grant(tmp_path: Path) -> None:
    store = _store(tmp_path / "consent.json")
    store.grant(Tier.HEALTH)
    store.grant(Tier.PERFORMANCE)
    assert store.allows(Tier.HEALTH)
    assert store.allows(Tier.PERFORMANCE)
    assert not store.allows(Tier.CONTENT)  # never implied by the other tiers
    store.grant(Tier.CONTENT)
    assert store.allows(Tier.CONTENT)


def test_decisions_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "consent.json"
    first = _store(path)
    first.grant(Tier.HEALTH)
    first.grant(Tier.CONTENT)
    first.revoke(Tier.CONTENT)
    again = _store(path)
    assert again.allows(Tier.HEALTH)
    assert not again.allows(Tier.CONTENT)
    assert again.records() == first.records()
    assert again.consent_hash() == first.consent_hash()


def test_revoke_returns_a_signed_record_for_the_deletion_request(tmp_path: Path) -> None:
    store = _store(tmp_path / "consent.json")
    granted = store.grant(Tier.PERFORMANCE)
    revoked = store.revoke(Tier.PERFORMANCE)
    assert not store.allows(Tier.PERFORMANCE)
    assert revoked.record.tier is Tier.PERFORMANCE
    assert not revoked.record.granted
    assert revoked.record.version == granted.record.version + 1
    assert revoked.record.recorded_at > granted.record.recorded_at
    assert revoked.record.policy_hash == POLICY.content_hash
    KEY.verify_key.verify(revoked.record.canonical_bytes(), revoked.signature)
    # Revoking again changes nothing and hands back the same decision.
    assert store.revoke(Tier.PERFORMANCE) == revoked
    assert len(store.records()) == 2


def test_every_record_is_signed_by_the_device_key(tmp_path: Path) -> None:
    store = _store(tmp_path / "consent.json")
    store.grant(Tier.HEALTH)
    store.revoke(Tier.HEALTH)
    for signed in _store(tmp_path / "consent.json").records():
        KEY.verify_key.verify(signed.record.canonical_bytes(), signed.signature)
    tampered = signed.record.model_copy(update={"granted": True})
    with pytest.raises(Exception, match="forged"):
        KEY.verify_key.verify(tampered.canonical_bytes(), signed.signature)


def test_grant_is_idempotent(tmp_path: Path) -> None:
    store = _store(tmp_path / "consent.json")
    assert store.grant(Tier.HEALTH) == store.grant(Tier.HEALTH)
    assert [s.record.version for s in store.records()] == [1]


def test_consent_hash_follows_the_current_decisions(tmp_path: Path) -> None:
    store = _store(tmp_path / "consent.json")
    nothing = store.consent_hash()
    store.grant(Tier.HEALTH)
    health = store.consent_hash()
    store.grant(Tier.PERFORMANCE)
    both = store.consent_hash()
    store.revoke(Tier.PERFORMANCE)
    revoked = store.consent_hash()
    assert len({nothing, health, both, revoked}) == 4
    current = [s.record for s in store.current().values()]
    assert store.consent_hash() == consent_hash_of(current)
    assert consent_hash_of(reversed(current)) == consent_hash_of(current)
    with pytest.raises(ValueError, match="one record per tier"):
        consent_hash_of([current[0], current[0]])


def test_a_new_consent_notice_makes_old_grants_stale(tmp_path: Path) -> None:
    path = tmp_path / "consent.json"
    _store(path).grant(Tier.HEALTH)
    store = _store(path, _with_notice(2))
    assert not store.allows(Tier.HEALTH)
    record = store.grant(Tier.HEALTH)
    assert record.record.notice_version == 2
    assert store.allows(Tier.HEALTH)


def test_a_failed_signature_records_nothing(tmp_path: Path) -> None:
    def broken(data: bytes) -> bytes:
        raise OSError("TPM unavailable")

    store = ConsentStore(tmp_path / "consent.json", broken, POLICY)
    with pytest.raises(ConsentError, match="TPM unavailable"):
        store.grant(Tier.HEALTH)
    assert not store.allows(Tier.HEALTH)
    assert store.records() == []
    assert not (tmp_path / "consent.json").exists()


def test_a_corrupt_history_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "consent.json"
    path.write_text('{"format": 1, "records": [{"record": {"tier": "health"}}]}')
    with pytest.raises(ConsentError, match=r"consent\.json: records\.0"):
        _store(path)
    path.write_text("not json")
    with pytest.raises(ConsentError, match=r"consent\.json"):
        _store(path)


def test_reordered_history_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "consent.json"
    store = _store(path)
    store.grant(Tier.HEALTH)
    store.revoke(Tier.HEALTH)
    text = path.read_text().replace('"version": 2', '"version": 9')
    path.write_text(text)
    with pytest.raises(ConsentError, match="versions"):
        _store(path)


def test_an_interrupted_write_leaves_the_last_decision(tmp_path: Path) -> None:
    path = tmp_path / "consent.json"
    _store(path).grant(Tier.HEALTH)
    # A crash before the atomic rename leaves only a partial temporary file behind.
    path.with_name(path.name + ".tmp").write_bytes(b'{"format": 1, "rec')
    store = _store(path)
    assert store.allows(Tier.HEALTH)
    store.grant(Tier.PERFORMANCE)
    assert _store(path).allows(Tier.PERFORMANCE)


def test_records_round_trip_as_wire_data() -> None:
    record = ConsentRecord(
        tier=Tier.CONTENT,
        granted=True,
        version=1,
        notice_version=1,
        recorded_at=START,
        policy_hash=POLICY.content_hash,
    )
    signed = SignedConsentRecord(record=record, signature=_sign(record.canonical_bytes()))
    assert SignedConsentRecord.model_validate_json(signed.model_dump_json()) == signed
    with pytest.raises(ValueError, match="timezone"):
        ConsentRecord.model_validate({**record.model_dump(), "recorded_at": "2026-01-01T00:00"})


def _on_disk(path: Path) -> list[tuple[int, Tier, bool]]:
    return [(s.record.version, s.record.tier, s.record.granted) for s in _store(path).records()]


def test_a_write_from_a_stale_store_keeps_a_revocation_written_by_another(
    tmp_path: Path,
) -> None:
    """Review s18b H1: every write re-reads the file under its lock and adds only its own
    decision, so an object's stale view never replaces what another one wrote."""
    path = tmp_path / "consent.json"
    _store(path).grant(Tier.HEALTH)
    stale, other = _store(path), _store(path)
    other.revoke(Tier.HEALTH)
    stale.grant(Tier.PERFORMANCE)
    assert _on_disk(path) == [
        (1, Tier.HEALTH, True),
        (2, Tier.HEALTH, False),
        (3, Tier.PERFORMANCE, True),
    ]
    assert not stale.allows(Tier.HEALTH)  # adopted what the file holds
    assert stale.allows(Tier.PERFORMANCE)
    # A revocation the file holds already is not written again, and is not new.
    assert stale.decide(Tier.HEALTH, granted=False) == (stale.current()[Tier.HEALTH], False)
    assert len(_on_disk(path)) == 3


def test_a_deferred_write_applies_only_its_decisions_on_top_of_the_file(
    tmp_path: Path,
) -> None:
    """Deferred (background mode): a decision made in memory is re-numbered after what
    another object wrote meanwhile; a revocation it already holds is not repeated."""
    path = tmp_path / "consent.json"
    _store(path).grant(Tier.HEALTH)
    stale = _store(path)
    stale.defer_writes()
    _store(path).revoke(Tier.HEALTH)
    made = stale.grant(Tier.PERFORMANCE)
    revoked = stale.revoke(Tier.HEALTH)  # in memory: health was granted
    assert made.record.version == 2
    written = stale.persist()
    assert _on_disk(path) == [
        (1, Tier.HEALTH, True),
        (2, Tier.HEALTH, False),
        (3, Tier.PERFORMANCE, True),
    ]
    (first, final), (second, none) = written
    assert first == made
    assert final is not None
    assert final.record.version == 3
    assert final.record.recorded_at == made.record.recorded_at
    KEY.verify_key.verify(final.record.canonical_bytes(), final.signature)
    assert second == revoked
    assert none is None  # the file held that revocation already
    assert stale.unpersisted == 0
    assert [s.record.version for s in stale.records()] == [1, 2, 3]
    assert not stale.allows(Tier.HEALTH)
    assert stale.allows(Tier.PERFORMANCE)


def test_concurrent_writers_on_one_file_lose_no_decision(tmp_path: Path) -> None:
    path = tmp_path / "consent.json"
    stores = [_store(path) for _ in range(4)]
    tiers = [Tier.HEALTH, Tier.PERFORMANCE]

    def toggle(store: ConsentStore, tier: Tier) -> None:
        for i in range(10):
            if i % 2:
                store.revoke(tier)
            else:
                store.grant(tier)

    threads = [
        threading.Thread(target=toggle, args=(store, tiers[i % 2]))
        for i, store in enumerate(stores)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    records = _on_disk(path)
    assert [v for v, _, _ in records] == list(range(1, len(records) + 1))
    # Every writer's last decision (a revocation) holds; no two records repeat a decision.
    assert not any(_store(path).allows(tier) for tier in tiers)
    for tier in tiers:
        granted = [g for _, t, g in records if t is tier]
        assert all(a != b for a, b in itertools.pairwise(granted))
