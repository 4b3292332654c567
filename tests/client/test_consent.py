"""Consent: opt-in per tier, signed and durable decisions, and the hash envelopes carry."""

from __future__ import annotations

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
