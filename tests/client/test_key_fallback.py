"""`FallbackKeyStore` and attestation: which key signs, when, and what is counted."""

from __future__ import annotations

from pathlib import Path

from client import FallbackKeyStore, SoftwareKeyStore
from client._drops import DropCounter
from client._keystore_fallback import current_assurance
from tests.client.memory_keys import MemoryTpmKeyStore, ScriptedAttestor


class Ticks:
    """A settable monotonic clock."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def _keys(tmp_path: Path, attestor: ScriptedAttestor, ticks: Ticks) -> FallbackKeyStore:
    keys = FallbackKeyStore(
        MemoryTpmKeyStore, SoftwareKeyStore(tmp_path), hold_seconds=60.0, monotonic=ticks
    )
    keys.attach_attestor(attestor)
    return keys


def test_the_tpm_signs_only_once_attested_and_the_answer_needs_no_io(tmp_path: Path) -> None:
    attestor = ScriptedAttestor(succeeds=True)
    keys = _keys(tmp_path, attestor, Ticks())
    assert keys.current() is keys.software  # not attested yet: software
    assert attestor.calls == 0  # `current`, `assurance`, `device_id` never attest
    assert keys.assurance == "software"
    assert keys.device_id.startswith("dev-")
    assert keys.refresh() is keys.tpm  # the worker attests
    assert attestor.calls == 1
    assert current_assurance(keys) == "tpm"
    assert keys.device_id.startswith("tpm-")


def test_a_refused_key_is_set_aside_for_the_hold_then_attested_again(tmp_path: Path) -> None:
    drops = DropCounter()
    ticks = Ticks()
    attestor = ScriptedAttestor(succeeds=True)
    keys = _keys(tmp_path, attestor, ticks)
    keys.attach_drops(drops)
    assert keys.signing_store() is keys.tpm

    assert keys.key_refused("key_not_attested")  # the signer changed: re-sign
    assert not keys.key_refused("key_not_attested")  # already software: nothing to fix
    assert keys.signing_store() is keys.software
    assert not attestor.is_attested()  # forgotten: the next TPM use attests first
    ticks.now += 59.0
    assert keys.signing_store() is keys.software
    ticks.now += 2.0
    assert keys.current() is keys.software  # no I/O: still unattested
    assert keys.signing_store() is keys.tpm  # attested again, on the sending thread
    assert attestor.calls == 2
    assert drops.snapshot() == {"tpm_unattested:key_not_attested": 1}


def test_a_failing_attestation_is_counted_once_per_spell(tmp_path: Path) -> None:
    drops = DropCounter()
    attestor = ScriptedAttestor(succeeds=False, error="unknown_ek_root")
    keys = _keys(tmp_path, attestor, Ticks())
    keys.attach_drops(drops)
    for _ in range(3):
        assert keys.signing_store() is keys.software
    attestor.succeeds = True
    assert keys.signing_store() is keys.tpm
    attestor.succeeds = False
    attestor.error = "quote_bad_signature"
    attestor.invalidate()
    assert keys.signing_store() is keys.software
    assert drops.snapshot() == {
        "tpm_unattested:unknown_ek_root": 1,
        "tpm_unattested:quote_bad_signature": 1,
    }
    assert keys.failures == drops.snapshot()
