"""The verifier on its own: each check, in order, with the reason a client keys on."""

from __future__ import annotations

import base64
import gc
import json
import uuid
from datetime import timedelta

import pytest
from nacl.public import PrivateKey

from ingest import Accepted, EnvelopeVerifier, RecentlyAccepted, Rejected
from schemas import RejectReason, key_fingerprint
from tests.ingest.kit import FIRST_WINDOW, WINDOW, Device, seal

NOW = FIRST_WINDOW + WINDOW + timedelta(seconds=10)  # the kit's first window ended 10 s ago


@pytest.fixture
def key() -> PrivateKey:
    return PrivateKey.generate()


@pytest.fixture
def verifier(key: PrivateKey) -> EnvelopeVerifier:
    device = Device()  # only for the policy hash it would use
    return EnvelopeVerifier(
        key,
        region="eu-test",
        known_policy_hashes=[device.envelope()["policy_hash"]],
        max_sealed_bytes=4096,
    )


def _rejected(verdict: object) -> Rejected:
    assert isinstance(verdict, Rejected), verdict
    return verdict


def test_valid_item_is_accepted_with_software_assurance(
    verifier: EnvelopeVerifier, key: PrivateKey
) -> None:
    device = Device("eu-test")
    env = device.envelope()
    verdict = verifier.verify(device.item(key.public_key, env), received_at=NOW)
    assert isinstance(verdict, Accepted)
    assert str(verdict.envelope_id) == env["envelope_id"]
    assert verdict.item.assurance == "software"
    assert verdict.item.key_fingerprint == key_fingerprint(device.public_key)
    assert verdict.item.received_at == NOW
    assert verdict.item.envelope.device_id == device.device_id


def test_oversized_item_is_refused_before_decoding(verifier: EnvelopeVerifier) -> None:
    verdict = _rejected(verifier.verify("A" * 10_000, received_at=NOW))
    assert verdict.reason is RejectReason.ITEM_TOO_LARGE


@pytest.mark.parametrize("item", ["not base64!", "QUJD\u00e9", "QUJ"])
def test_non_base64_item(verifier: EnvelopeVerifier, item: str) -> None:
    assert _rejected(verifier.verify(item, received_at=NOW)).reason is RejectReason.NOT_BASE64


def test_item_sealed_to_another_key_fails_to_unseal(verifier: EnvelopeVerifier) -> None:
    other = PrivateKey.generate().public_key
    verdict = _rejected(verifier.verify(Device("eu-test").item(other), received_at=NOW))
    assert verdict.reason is RejectReason.UNSEAL_FAILED


def test_short_ciphertext_fails_to_unseal(verifier: EnvelopeVerifier) -> None:
    item = base64.b64encode(b"tiny").decode()
    assert _rejected(verifier.verify(item, received_at=NOW)).reason is RejectReason.UNSEAL_FAILED


def test_sealed_garbage_is_a_malformed_signed_envelope(
    verifier: EnvelopeVerifier, key: PrivateKey
) -> None:
    verdict = _rejected(verifier.verify(seal(key.public_key, b"{}"), received_at=NOW))
    assert verdict.reason is RejectReason.MALFORMED_SIGNED


def test_short_public_key_is_a_malformed_signed_envelope(
    verifier: EnvelopeVerifier, key: PrivateKey
) -> None:
    device = Device("eu-test")
    signed = json.loads(device.signed(json.dumps(device.envelope()).encode()))
    signed["public_key"] = base64.b64encode(b"x" * 31).decode()
    item = seal(key.public_key, json.dumps(signed).encode())
    verdict = _rejected(verifier.verify(item, received_at=NOW))
    assert verdict.reason is RejectReason.MALFORMED_SIGNED
    assert "32 bytes" in verdict.detail


def test_tampered_payload_fails_the_signature(verifier: EnvelopeVerifier, key: PrivateKey) -> None:
    device = Device("eu-test")
    original = json.dumps(device.envelope()).encode()
    signature = device.key.sign(original).signature
    tampered = original.replace(b'"value": 3.0', b'"value": 300.0')
    assert tampered != original
    item = seal(key.public_key, device.signed(tampered, signature=signature))
    assert _rejected(verifier.verify(item, received_at=NOW)).reason is RejectReason.BAD_SIGNATURE


def test_schema_invalid_payload_names_the_problem(
    verifier: EnvelopeVerifier, key: PrivateKey
) -> None:
    device = Device("eu-test")
    before = FIRST_WINDOW - timedelta(hours=15)  # before window_start
    env = device.envelope(window_end=before.isoformat())
    verdict = _rejected(verifier.verify(device.item(key.public_key, env), received_at=NOW))
    assert verdict.reason is RejectReason.SCHEMA_INVALID
    assert "window_end must be after window_start" in verdict.detail


def test_schema_errors_are_summarised_without_echoing_input(
    verifier: EnvelopeVerifier, key: PrivateKey
) -> None:
    device = Device("eu-test")
    env = device.envelope(secret_field="user typed this", sequence=-1)
    verdict = _rejected(verifier.verify(device.item(key.public_key, env), received_at=NOW))
    assert verdict.reason is RejectReason.SCHEMA_INVALID
    assert "sequence" in verdict.detail
    assert "user typed this" not in verdict.detail


@pytest.mark.parametrize("sequence", [1.0, "7", True])
def test_a_field_of_another_json_type_is_refused_not_coerced(
    verifier: EnvelopeVerifier, key: PrivateKey, sequence: object
) -> None:
    """The payload is read with the JSON types the published schema gives."""
    device = Device("eu-test")
    assert isinstance(
        verifier.verify(device.item(key.public_key, device.envelope()), received_at=NOW),
        Accepted,
    )
    env = device.envelope(sequence=sequence)
    verdict = _rejected(verifier.verify(device.item(key.public_key, env), received_at=NOW))
    assert verdict.reason is RejectReason.SCHEMA_INVALID
    assert "sequence" in verdict.detail


def test_device_id_must_be_the_signing_keys(verifier: EnvelopeVerifier, key: PrivateKey) -> None:
    device, other = Device("eu-test"), Device("eu-test")
    env = device.envelope(device_id=other.device_id)
    verdict = _rejected(verifier.verify(device.item(key.public_key, env), received_at=NOW))
    assert verdict.reason is RejectReason.DEVICE_KEY_MISMATCH
    assert str(verdict.envelope_id) == env["envelope_id"]


def test_unknown_policy(verifier: EnvelopeVerifier, key: PrivateKey) -> None:
    device = Device("eu-test")
    env = device.envelope(policy_hash="0" * 64)
    verdict = _rejected(verifier.verify(device.item(key.public_key, env), received_at=NOW))
    assert verdict.reason is RejectReason.UNKNOWN_POLICY


def test_wrong_region(verifier: EnvelopeVerifier, key: PrivateKey) -> None:
    device = Device("us-test")
    verdict = _rejected(verifier.verify(device.item(key.public_key), received_at=NOW))
    assert verdict.reason is RejectReason.WRONG_REGION
    assert "us-test" in verdict.detail


def test_recently_accepted_forgets_the_oldest_beyond_its_bound() -> None:
    recent = RecentlyAccepted(2)
    a, b, c = (("dev-a", uuid.uuid4()) for _ in range(3))
    recent.add_all([a, b])
    recent.add_all([c])
    assert a not in recent
    assert b in recent
    assert c in recent
    assert len(recent) == 2


def test_recently_accepted_keeps_nothing_the_garbage_collector_walks() -> None:
    # One entry per accepted envelope, kept for good: UUID objects (tracked) made every
    # collection pass walk tens of thousands of them in a busy ingest.
    recent = RecentlyAccepted(100)
    pairs = [(f"dev-{i}", uuid.uuid4()) for i in range(50)]
    recent.add_all(pairs)
    gc.collect()
    assert not any(gc.is_tracked(key) for key in recent._ids)
    assert all(pair in recent for pair in pairs)
    assert ("dev-0", pairs[1][1]) not in recent  # another device's id is not a duplicate
    assert "dev-0" not in recent
    assert (pairs[0][0], str(pairs[0][1])) not in recent


def test_recently_accepted_of_size_zero_remembers_nothing() -> None:
    recent = RecentlyAccepted(0)
    a = ("dev-a", uuid.uuid4())
    recent.add_all([a])
    assert a not in recent


@pytest.mark.parametrize(
    ("field", "value", "detail"),
    [
        # Times from the end of the kit's first window (NOW is 10 s after it).
        ("window_end", timedelta(minutes=30), "window_end is 1790 s ahead"),
        ("sent_at", timedelta(minutes=6), "sent_at is 350 s ahead"),
        ("sent_at", timedelta(minutes=-30), "before the window it reports on ended"),
    ],
)
def test_a_clock_running_ahead_is_refused(
    verifier: EnvelopeVerifier, key: PrivateKey, field: str, value: timedelta, detail: str
) -> None:
    device = Device("eu-test")
    env = device.envelope(**{field: (FIRST_WINDOW + WINDOW + value).isoformat()})
    verdict = _rejected(verifier.verify(device.item(key.public_key, env), received_at=NOW))
    assert verdict.reason is RejectReason.CLOCK_SKEW
    assert detail in verdict.detail


def test_skew_within_tolerance_and_old_envelopes_are_accepted(
    verifier: EnvelopeVerifier, key: PrivateKey
) -> None:
    device = Device("eu-test")
    # Four minutes ahead is within the default five; a year-old envelope was spooled
    # while offline and is still welcome (retention bounds its age).
    ahead = device.envelope(sent_at=(NOW + timedelta(minutes=4)).isoformat())
    late = FIRST_WINDOW + timedelta(days=365)
    assert isinstance(
        verifier.verify(device.item(key.public_key, ahead), received_at=NOW), Accepted
    )
    assert isinstance(verifier.verify(device.item(key.public_key), received_at=late), Accepted)


def test_the_ingests_reading_of_a_signed_envelope_has_the_shared_models_fields() -> None:
    """`_SignedEnvelopeIn` (base64 decoded while parsing) is `SignedEnvelope` as read by
    the ingest: the same fields, defaults and refusals of unknown fields."""
    from ingest._verify import _SignedEnvelopeIn
    from schemas import SignedEnvelope

    ours, shared = _SignedEnvelopeIn.model_fields, SignedEnvelope.model_fields
    assert list(ours) == list(shared)
    for name in ("v", "alg"):
        assert ours[name].annotation == shared[name].annotation
        assert ours[name].default == shared[name].default
    assert _SignedEnvelopeIn.model_config.get("extra") == "forbid"


@pytest.mark.parametrize(
    "document",
    [
        {"public_key": "AAAA", "payload": "e30=", "signature": "AAAA"},
        {"v": 1, "alg": "ecdsa-p256", "public_key": "BA==", "payload": "", "signature": ""},
        {"public_key": "AAAA", "payload": "e30=", "signature": "AAAA", "extra": 1},
        {"v": 2, "public_key": "AAAA", "payload": "e30=", "signature": "AAAA"},
        {"alg": "rsa", "public_key": "AAAA", "payload": "e30=", "signature": "AAAA"},
        {"public_key": 5, "payload": "e30=", "signature": "AAAA"},
        {"payload": "e30=", "signature": "AAAA"},
    ],
)
def test_the_ingests_reading_decodes_what_the_shared_model_decodes(
    document: dict[str, object],
) -> None:
    """Where they differ, the ingest's is the more lenient on encoding alone (missing
    padding, the URL-safe alphabet: the same bytes either way) and stricter on stray
    characters (the shared decoder drops them); the signature covers decoded bytes."""
    from pydantic import ValidationError

    from ingest._verify import _SignedEnvelopeIn
    from schemas import SignedEnvelope

    raw = json.dumps(document)
    try:
        shared = SignedEnvelope.model_validate_json(raw)
    except ValidationError:
        with pytest.raises(ValidationError):
            _SignedEnvelopeIn.model_validate_json(raw)
        return
    ours = _SignedEnvelopeIn.model_validate_json(raw)
    assert (ours.v, ours.alg, ours.public_key, ours.payload, ours.signature) == (
        shared.v,
        shared.alg,
        shared.public_key,
        shared.payload,
        shared.signature,
    )


def test_unpadded_or_url_safe_base64_reads_as_the_same_bytes() -> None:
    from ingest._verify import _SignedEnvelopeIn

    fields = {"payload": "e30=", "signature": "AAAA"}
    padded = _SignedEnvelopeIn.model_validate_json(json.dumps({**fields, "public_key": "-_8="}))
    bare = _SignedEnvelopeIn.model_validate_json(json.dumps({**fields, "public_key": "+/8"}))
    assert padded.public_key == bare.public_key == base64.b64decode("+/8=")


def test_a_signed_envelope_with_whitespace_in_its_base64_is_malformed(
    verifier: EnvelopeVerifier, key: PrivateKey
) -> None:
    device = Device("eu-test")
    payload = json.dumps(device.envelope()).encode()
    signed = json.loads(device.signed(payload))
    signed["payload"] = signed["payload"][:8] + "\n" + signed["payload"][8:]
    verdict = verifier.verify(seal(key.public_key, json.dumps(signed).encode()), received_at=NOW)
    assert _rejected(verdict).reason is RejectReason.MALFORMED_SIGNED


@pytest.mark.parametrize("padding", [(b"", b""), (b" \n", b"\r\n\t ")])
def test_an_accepted_envelopes_bus_message_reads_back_as_the_verified_item(
    verifier: EnvelopeVerifier, key: PrivateKey, padding: tuple[bytes, bytes]
) -> None:
    """The message is built around the device's signed bytes (whitespace included), and
    the sink's decoding of it is exactly what was verified."""
    from schemas import IngestedEnvelope

    device = Device("eu-test")
    payload = padding[0] + json.dumps(device.envelope(), indent=1).encode() + padding[1]
    verdict = verifier.verify(seal(key.public_key, device.signed(payload)), received_at=NOW)
    assert isinstance(verdict, Accepted), verdict
    assert IngestedEnvelope.model_validate_json(verdict.encoded) == verdict.item
    assert payload in verdict.encoded


def test_the_bus_message_carries_the_ingests_fields() -> None:
    from ingest._verify import ingested_json
    from schemas import IngestedEnvelope

    device = Device("eu-test")
    payload = json.dumps(device.envelope()).encode()
    batch = FIRST_WINDOW
    item = IngestedEnvelope.model_validate_json(
        ingested_json(payload, NOW, "ab" * 32, "tpm", batch)
    )
    assert (item.received_at, item.key_fingerprint, item.assurance, item.batch_start) == (
        NOW,
        "ab" * 32,
        "tpm",
        batch,
    )
    unbatched = IngestedEnvelope.model_validate_json(
        ingested_json(payload, NOW, "ab" * 32, "software", None)
    )
    assert unbatched.batch_start is None


def test_each_accepted_item_carries_its_own_receipt_time(
    verifier: EnvelopeVerifier, key: PrivateKey
) -> None:
    """The verifier keeps the text of the last receipt time (a request's items share
    one): an item received at another time must not be stamped with it."""
    from schemas import IngestedEnvelope

    later = NOW + timedelta(seconds=1)
    stamped = []
    for at in (NOW, NOW, later, NOW + timedelta(seconds=0)):  # the last: equal, not the same
        verdict = verifier.verify(Device("eu-test").item(key.public_key), received_at=at)
        assert isinstance(verdict, Accepted), verdict
        assert verdict.item.received_at == at
        stamped.append(IngestedEnvelope.model_validate_json(verdict.encoded).received_at)
    assert stamped == [NOW, NOW, later, NOW]
