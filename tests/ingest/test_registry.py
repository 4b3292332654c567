"""The device registry: enrollment and attestation state that survives a restart."""

from __future__ import annotations

from pathlib import Path

from ingest._attested_keys import AttestedKeys
from ingest._registry import DeviceRecord, SqliteDeviceRegistry
from schemas import key_fingerprint

POINT = b"\x04" + bytes(range(1, 65))  # shape only; AttestedKeys validates the curve


def _enroll(registry: SqliteDeviceRegistry, device_id: str = "tpm-" + "a" * 32) -> str:
    registry.begin_enrollment(
        device_id=device_id,
        ek_fingerprint="f" * 64,
        ek_public=b"ek",
        ak_public=b"ak",
        ak_name=b"name",
        challenge=b"secret",
        challenge_expires_at=100.0,
    )
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
    registry.complete_enrollment(device_id, now=5.0)
    _attest(registry, device_id)
    registry.close()

    reopened = SqliteDeviceRegistry(path)
    record = reopened.get(device_id)
    by_key = reopened.by_signing_key(key_fingerprint(POINT))
    reopened.close()

    assert record is not None
    assert record.status == "enrolled"
    assert record.challenge is None
    assert record.signing_key == POINT
    assert record.attestation_expires_at == 3610.0
    assert (record.tpm_reset_count, record.tpm_restart_count, record.tpm_clock) == (2, 0, 12345)
    assert by_key == record


def test_re_enrollment_forgets_the_attested_key_but_keeps_the_tpm_clock(tmp_path: Path) -> None:
    registry = SqliteDeviceRegistry(tmp_path / "devices.sqlite3")
    device_id = _enroll(registry)
    registry.complete_enrollment(device_id, now=5.0)
    _attest(registry, device_id)

    _enroll(registry, device_id)
    record = registry.get(device_id)
    registry.close()

    assert record is not None
    assert record.status == "pending"
    assert record.signing_key is None
    assert record.tpm_clock == 12345


def test_revocation_is_durable_and_survives_re_enrollment(tmp_path: Path) -> None:
    path = tmp_path / "devices.sqlite3"
    registry = SqliteDeviceRegistry(path)
    device_id = _enroll(registry)
    assert registry.revoke(device_id, reason="stolen", now=7.0)
    assert not registry.revoke("tpm-" + "b" * 32, reason="unknown", now=7.0)
    _enroll(registry, device_id)
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
    registry.complete_enrollment(device_id, now=5.0)
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
