"""Activation is a compare-and-swap on the challenge it verified: an enroll that lands
between the proof's check and the registry update wins, the older proof loses whole."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from auditlog import AuditLog
from ingest._attestation_service import AttestationService
from ingest._attested_keys import AttestedKeys
from ingest._registry import PendingEnrollment, SqliteDeviceRegistry
from ingest.attestation import AttestationError, AttestationReason
from policies import load_attestation_policy
from schemas import ActivateRequest

DEVICE = "tpm-" + "d" * 32
SECRET = b"s" * 32


def _pending(challenge: bytes, ak: bytes) -> PendingEnrollment:
    return PendingEnrollment(
        device_id=DEVICE,
        ek_fingerprint="e" * 64,
        ek_public=b"ek",
        ak_public=ak,
        ak_name=b"name-" + ak,
        challenge=challenge,
        expires_at=4e9,
    )


class RacedRegistry(SqliteDeviceRegistry):
    """A registry where another enroll replaces the challenge just before the swap."""

    def activate(self, device_id: str, *, challenge: bytes, now: float) -> bool:
        self.offer_challenge(_pending(b"n" * 32, b"newer-ak"), now=now)
        return super().activate(device_id, challenge=challenge, now=now)


def _service(registry: SqliteDeviceRegistry, audit: AuditLog) -> AttestationService:
    return AttestationService(load_attestation_policy(), registry, audit, AttestedKeys(registry))


def _activate(service: AttestationService, proof: bytes) -> None:
    request = ActivateRequest(device_id=DEVICE, proof=base64.b64encode(proof))
    service.activate(request, source="192.0.2.1")


def test_a_proof_whose_challenge_was_replaced_meanwhile_registers_nothing(
    tmp_path: Path,
) -> None:
    registry = RacedRegistry(tmp_path / "devices.sqlite3")
    audit = AuditLog(tmp_path / "audit.sqlite3")
    registry.offer_challenge(_pending(SECRET, b"first-ak"), now=0.0)

    with pytest.raises(AttestationError) as refused:
        _activate(_service(registry, audit), SECRET)  # the right answer, too late
    device, pending = registry.get(DEVICE), registry.pending(DEVICE)
    entries = audit.entries(action="activate")
    registry.close()
    audit.close()

    assert refused.value.attestation_reason is AttestationReason.CHALLENGE_SUPERSEDED
    assert refused.value.status_code == 409
    assert device is None
    assert pending is not None
    assert pending.ak_public == b"newer-ak"  # the newer enroll stands, to be answered
    assert [(e.decision, e.reason) for e in entries] == [("rejected", "challenge_superseded")]


def test_a_proof_is_accepted_once(tmp_path: Path) -> None:
    registry = SqliteDeviceRegistry(tmp_path / "devices.sqlite3")
    audit = AuditLog(tmp_path / "audit.sqlite3")
    service = _service(registry, audit)
    registry.offer_challenge(_pending(SECRET, b"ak"), now=0.0)

    _activate(service, SECRET)
    with pytest.raises(AttestationError) as replayed:
        _activate(service, SECRET)
    device = registry.get(DEVICE)
    registry.close()
    audit.close()

    assert device is not None
    assert device.status == "enrolled"
    assert replayed.value.attestation_reason is AttestationReason.NO_PENDING_ENROLLMENT
