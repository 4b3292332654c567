"""The wire format: checked-in JSON Schema is current, and the models refuse bad data."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from pydantic import ValidationError

import schemas
from schemas import (
    JSONSCHEMA_DIR,
    AppInfo,
    CounterAggregate,
    EnvelopeV1,
    HistogramAggregate,
    NoiseSpec,
    device_id_for,
    json_schemas,
)

NOISE = NoiseSpec(mechanism="discrete_laplace", scale=8.0, epsilon=0.25, lower=0, upper=60)
NOW = dt.datetime(2026, 11, 27, 12, tzinfo=dt.UTC)


def _envelope(**overrides: object) -> EnvelopeV1:
    fields: dict[str, object] = {
        "envelope_id": uuid.uuid4(),
        "device_id": device_id_for(b"k" * 32),
        "sequence": 7,
        "sent_at": NOW,
        "window_start": NOW - dt.timedelta(hours=1),
        "window_end": NOW,
        "region": "eu",
        "policy_hash": "0" * 64,
        "app": AppInfo(name="notes-ai", version="2.3.1"),
        "aggregates": [
            CounterAggregate(
                signal="inference.requests",
                tier="performance",
                attributes={"route": "local"},
                value=12.0,
                noise=NOISE,
            )
        ],
    }
    fields.update(overrides)
    return EnvelopeV1.model_validate(fields)


def test_checked_in_json_schema_is_current() -> None:
    for name, text in json_schemas().items():
        path = JSONSCHEMA_DIR / name
        assert path.exists(), f"{name} missing: run `make schemas`"
        assert path.read_text(encoding="utf-8") == text, f"{name} stale: run `make schemas`"


def test_envelope_round_trips_through_json() -> None:
    env = _envelope()
    assert EnvelopeV1.model_validate_json(env.model_dump_json()) == env


def test_window_must_end_after_it_starts() -> None:
    with pytest.raises(ValidationError, match="window_end must be after window_start"):
        _envelope(window_end=NOW - dt.timedelta(hours=2))


def test_naive_timestamps_are_refused() -> None:
    with pytest.raises(ValidationError, match="timezone"):
        _envelope(sent_at=dt.datetime(2026, 1, 1))


def test_unknown_fields_are_refused() -> None:
    data = _envelope().model_dump(mode="json")
    data["user_text"] = "hello"
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        EnvelopeV1.model_validate(data)


def test_noise_spec_needs_exactly_one_privacy_measure() -> None:
    with pytest.raises(ValidationError, match="exactly one of epsilon"):
        NoiseSpec(mechanism="laplace", scale=1.0, lower=0, upper=1)
    with pytest.raises(ValidationError, match="exactly one of epsilon"):
        NoiseSpec(mechanism="laplace", scale=1.0, epsilon=1.0, rho=0.5, lower=0, upper=1)


def test_histogram_shape_is_checked() -> None:
    with pytest.raises(ValidationError, match=r"len\(bounds\) \+ 1"):
        HistogramAggregate(
            signal="lat", tier="performance", bounds=[1, 2], counts=[1, 2], count_noise=NOISE
        )
    with pytest.raises(ValidationError, match="strictly increasing"):
        HistogramAggregate(
            signal="lat", tier="performance", bounds=[2, 1], counts=[1, 2, 3], count_noise=NOISE
        )


def test_non_finite_values_are_refused() -> None:
    with pytest.raises(ValidationError):
        CounterAggregate(signal="x", tier="health", value=float("nan"), noise=NOISE)


def test_device_id_is_bound_to_the_key() -> None:
    assert device_id_for(b"a" * 32) != device_id_for(b"b" * 32)
    assert device_id_for(b"a" * 32).startswith("dev-")


def test_public_names_are_pinned() -> None:
    assert set(schemas.__all__) == {
        "MAX_BATCH", "MAX_SEALED_BYTES", "JSONSCHEMA_DIR", "Aggregate", "AppInfo",
        "BatchResult", "CounterAggregate", "EnvelopeBatch", "EnvelopeV1",
        "HistogramAggregate", "IngestedEnvelope", "ItemResult", "Mechanism", "NoiseSpec",
        "RejectReason", "SignedEnvelope", "Tier", "device_id_for", "json_schemas",
        "key_fingerprint", "tpm_device_id_for", "write_json_schemas",
        "ActivateRequest", "AttestRequest", "AttestationResult", "CertifyEvidence",
        "EnrollRequest", "EnrollmentChallenge", "EnrollmentResult", "NonceGrant",
        "NonceRequest", "QuoteEvidence", "RevocationResult", "RevokeRequest",
        "TotalAggregate", "DeletionReceipt", "DeletionRequestV1", "IngestedDeletionRequest",
        "SignedDeletionRequest", "HelperShareV1", "PrioReport", "TaskId",
        "MAX_REPORT_SHARE_BYTES", "REPORT_ID_BYTES", "report_batch_start",
        "ClientReport", "MAX_CLIENT_REPORT_REASONS",
    }  # fmt: skip
