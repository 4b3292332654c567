"""The device registry: enrollment and attestation state that survives a restart."""

from __future__ import annotations

from pathlib import Path

from ingest._attested_keys import AttestedKeys
from ingest._registry import DeviceRecord, PendingEnrollment, SqliteDeviceRegistry
from schemas import key_fingerprint

POINT = b"\x04" + bytes(range(1, 65))  # shape only; AttestedKeys validates the curve
DEVICE = "tpm-" + "a" * 32


def _offer(
    registry: SqliteDeviceRegistry,
    device_id: str = DEVICE,
    *,
    ak: bytes = b"ak",
    challenge: bytes = b"secret",
    expires_at: float = 100.0,
    now: float = 1.0,
) -> PendingEnrollment:
    pending = PendingEnrollment(
        device_id=device_id,
        ek_fingerprint="f" * 64,
        ek_public=b"ek",
        ak_public=ak,
        ak_name=b"name-" + ak,
        challenge=challenge,
        expires_at=expires_at,
    )
    registry.offer_challenge(pending, now=now)
    return pending


def _enroll(registry: SqliteDeviceRegistry, device_id: str = DEVICE, ak: bytes = b"ak") -> str:
    _offer(registry, device_id, ak=ak, challenge=b"secret-" + ak)
    assert registry.activate(device_id, challenge=b"secret-" + ak, now=5.0)
    return device_id


def _attest(registry: SqliteDeviceRegistry, device_id: str, key: bytes = POINT) -> None:
    registry.record_attestation(
        device_id,
        signing_key=key,
        signing_key_fp=key_fingerprint(key),
        now=10.0,
        expires_at=3610.0,
        reset_count=2,
        restart_count=0,
        clock=12345,
    )


def test_enrollment_and_attestation_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "devices.sqlite3"
    registry = SqliteDeviceRegistry(path)
    device_id = _enroll(registry)
    _attest(registry, device_id)
    registry.close()

    reopened = SqliteDeviceRegistry(path)
    record = reopened.get(device_id)
    by_key = reopened.by_signing_key(key_fingerprint(POINT))
    pending = reopened.pending(device_id)
    reopened.close()

    assert record is not None
    assert record.status == "enrolled"
    assert record.enrolled_at == 5.0
    assert pending is None  # the answered challenge is gone
    assert record.signing_key == POINT
    assert record.attestation_expires_at == 3610.0
    assert (record.tpm_reset_count, record.tpm_restart_count, record.tpm_clock) == (2, 0, 12345)
    assert by_key == record


def test_a_challenge_changes_nothing_about_an_enrolled_device(tmp_path: Path) -> None:
    registry = SqliteDeviceRegistry(tmp_path / "devices.sqlite3")
    _attest(registry, _enroll(registry))
    before = registry.get(DEVICE)

    _offer(registry, ak=b"intruder-ak", challenge=b"their-secret")
    after = registry.get(DEVICE)
    pending = registry.pending(DEVICE)
    registry.close()

    assert after == before
    assert after is not None
    assert after.ak_public == b"ak"
    assert pending is not None
    assert pending.ak_public == b"intruder-ak"


def test_a_first_challenge_creates_no_device(tmp_path: Path) -> None:
    registry = SqliteDeviceRegistry(tmp_path / "devices.sqlite3")
    _offer(registry)
    assert registry.get(DEVICE) is None
    assert registry.pending(DEVICE) is not None
    registry.close()


def test_activation_is_a_compare_and_swap_on_the_verified_challenge(tmp_path: Path) -> None:
    registry = SqliteDeviceRegistry(tmp_path / "devices.sqlite3")
    _offer(registry, ak=b"first-ak", challenge=b"first")
    # A concurrent enroll replaces the challenge after the first proof was checked.
    _offer(registry, ak=b"second-ak", challenge=b"second")

    lost = registry.activate(DEVICE, challenge=b"first", now=5.0)
    assert registry.get(DEVICE) is None  # nothing of either was registered
    won = registry.activate(DEVICE, challenge=b"second", now=6.0)
    again = registry.activate(DEVICE, challenge=b"second", now=7.0)
    record = registry.get(DEVICE)
    registry.close()

    assert (lost, won, again) == (False, True, False)
    assert record is not None
    assert (record.ak_public, record.enrolled_at) == (b"second-ak", 6.0)


def test_re_enrollment_with_a_new_ak_forgets_the_key_but_keeps_the_tpm_clock(
    tmp_path: Path,
) -> None:
    registry = SqliteDeviceRegistry(tmp_path / "devices.sqlite3")
    _attest(registry, _enroll(registry))

    _enroll(registry, DEVICE, ak=b"new-ak")
    record = registry.get(DEVICE)
    registry.close()

    assert record is not None
    assert record.status == "enrolled"
    assert record.ak_public == b"new-ak"
    assert record.signing_key is None
    assert record.attestation_expires_at is None
    assert record.tpm_clock == 12345


def test_re_enrollment_with_the_same_ak_keeps_the_attested_key(tmp_path: Path) -> None:
    registry = SqliteDeviceRegistry(tmp_path / "devices.sqlite3")
    _attest(registry, _enroll(registry))

    _enroll(registry, DEVICE)
    record = registry.get(DEVICE)
    registry.close()

    assert record is not None
    assert record.signing_key == POINT
    assert record.attestation_expires_at == 3610.0


def test_expired_challenges_are_dropped_when_a_new_one_is_offered(tmp_path: Path) -> None:
    registry = SqliteDeviceRegistry(tmp_path / "devices.sqlite3")
    other = "tpm-" + "c" * 32
    _offer(registry, other, expires_at=50.0)
    _offer(registry, expires_at=200.0, now=60.0)
    gone, kept = registry.pending(other), registry.pending(DEVICE)
    registry.close()

    assert gone is None
    assert kept is not None


def test_revocation_is_durable_and_survives_re_enrollment(tmp_path: Path) -> None:
    path = tmp_path / "devices.sqlite3"
    registry = SqliteDeviceRegistry(path)
    device_id = _enroll(registry)
    assert registry.revoke(device_id, reason="stolen", now=7.0)
    assert not registry.revoke("tpm-" + "b" * 32, reason="unknown", now=7.0)
    _enroll(registry, device_id, ak=b"other-ak")
    registry.close()

    reopened = SqliteDeviceRegistry(path)
    record = reopened.get(device_id)
    reopened.close()
    assert record is not None
    assert record.revoked
    assert record.revoked_reason == "stolen"


def test_the_key_cache_sees_revocation_after_invalidation(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    point = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    )
    registry = SqliteDeviceRegistry(tmp_path / "devices.sqlite3")
    device_id = _enroll(registry)
    keys = AttestedKeys(registry, ttl=3600.0)
    assert keys.lookup(point) is None  # cached as "not attested"

    _attest(registry, device_id, point)
    keys.invalidate(key_fingerprint(point))
    attested = keys.lookup(point)
    registry.revoke(device_id, reason="stolen", now=9.0)
    stale = keys.lookup(point)
    keys.invalidate(key_fingerprint(point))
    fresh = keys.lookup(point)
    registry.close()

    assert attested is not None
    assert attested.device_id == device_id
    assert not attested.revoked
    assert stale is not None
    assert not stale.revoked  # the cache is what makes the per-envelope check cheap
    assert fresh is not None
    assert fresh.revoked


def test_a_key_lookup_does_not_wait_for_a_write_in_progress(tmp_path: Path) -> None:
    # The envelope path looks keys up on the event loop; a write (enrollment,
    # attestation) holds the writer's lock across its fsync. Readers must not queue
    # behind it, and they still see every committed write.
    import threading

    registry = SqliteDeviceRegistry(tmp_path / "devices.sqlite3")
    _attest(registry, _enroll(registry))
    found: list[DeviceRecord | None] = []
    with registry._lock:  # a writer mid-transaction
        reader = threading.Thread(
            target=lambda: found.append(registry.by_signing_key(key_fingerprint(POINT)))
        )
        reader.start()
        reader.join(timeout=30)  # a deadlock guard only: the read returns at once
        assert not reader.is_alive()
    (record,) = found
    assert record is not None
    registry.close()
