"""Envelopes are signed by the device key and only the ingest can open them."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest
from nacl.exceptions import BadSignatureError
from nacl.public import SealedBox
from nacl.signing import VerifyKey

from client import EnvelopeSealer, KeyStore, KeyStoreError, SoftwareKeyStore
from client._envelope import build_envelope
from schemas import AppInfo, EnvelopeV1, SignedEnvelope, device_id_for
from tests.client.conftest import T0, MakeTelemetry, MemoryIngest


def _envelope(device_id: str) -> EnvelopeV1:
    return build_envelope(
        device_id=device_id,
        sequence=7,
        window_start=T0,
        window_end=T0.replace(hour=10),
        sent_at=T0.replace(hour=10),
        region="eu-west",
        policy_hash="0" * 64,
        app=AppInfo(name="demo-app", version="1.0"),
        aggregates=[],
    )


def test_seal_round_trip(tmp_path: Path, ingest: MemoryIngest) -> None:
    keys = SoftwareKeyStore(tmp_path)
    assert isinstance(keys, KeyStore)
    assert keys.assurance == "software"
    envelope = _envelope(device_id_for(keys.public_key()))
    item = EnvelopeSealer(keys, ingest.public_key).seal(envelope)
    opened, signer = ingest.open(item)  # unseal + verify with VerifyKey + parse
    assert opened == envelope
    assert signer == keys.public_key()
    assert opened.device_id == device_id_for(signer)


def test_tampered_payload_fails_verification(tmp_path: Path, ingest: MemoryIngest) -> None:
    keys = SoftwareKeyStore(tmp_path)
    item = EnvelopeSealer(keys, ingest.public_key).seal(_envelope("dev-x"))
    signed = SignedEnvelope.model_validate_json(
        SealedBox(ingest.private_key).decrypt(base64.b64decode(item))
    )
    with pytest.raises(BadSignatureError):
        VerifyKey(signed.public_key).verify(signed.payload + b" ", signed.signature)


def test_key_file_is_private_and_stable(tmp_path: Path) -> None:
    first = SoftwareKeyStore(tmp_path)
    mode = stat.S_IMODE(os.stat(first.path).st_mode)
    assert mode == 0o600
    assert SoftwareKeyStore(tmp_path).public_key() == first.public_key()


def test_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    keys = SoftwareKeyStore(tmp_path)
    os.chmod(keys.path, 0o644)
    with pytest.raises(KeyStoreError, match="chmod 600"):
        SoftwareKeyStore(tmp_path)


def test_sent_envelopes_open_at_the_ingest(make_telemetry: MakeTelemetry, clock, ingest) -> None:
    qw = make_telemetry()
    qw.counter("app.starts").add(1)
    (envelope,) = qw.collect(clock.advance(hours=1))
    assert qw.flush()
    (received,) = ingest.envelopes
    assert received.envelope_id == envelope.envelope_id
    assert received.device_id == qw.device_id
    assert received.aggregates == envelope.aggregates
    assert received.policy_hash == qw._policy.content_hash
