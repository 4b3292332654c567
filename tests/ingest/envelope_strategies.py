"""Hypothesis strategies for envelopes, after the wire schemas (`schemas.EnvelopeV1`,
`SignedEnvelope`, the aggregates, Prio3 reports, client reports).

Every drawn envelope starts as a valid one under the pilot policy (the kit's counter
release, signed by a software key) and has a few fields replaced by values from the
field's own domain, its edges (sequence 2^63, year 1 and 9999 with a time-zone offset,
1e308, a noise scale of 0, a signal or label the policy does not declare), or another
JSON type. So most draws pass the schema and reach the checks behind it (consent,
clock, window, policy, ledger), and the rest test the schema's own refusals.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Final

from hypothesis import strategies as st
from nacl.signing import SigningKey

from policies import DEFAULT_POLICY_PATH, PILOT_POLICY_PATH, aggregation_tasks, load_policy
from schemas import Tier, device_id_for
from tests.ingest.kit import FIRST_WINDOW, WINDOW, Device, counter_aggregate, seal

__all__ = [
    "RECEIVED_AT",
    "WINDOW_START",
    "base_envelope",
    "deletion_requests",
    "devices",
    "envelopes",
    "items",
    "json_values",
]

WINDOW_START = FIRST_WINDOW  # recent: the ingest refuses a window past its retention
_WINDOW = WINDOW  # the pilot and default policies' window: one day
RECEIVED_AT = WINDOW_START + _WINDOW + timedelta(seconds=10)

_PILOT = load_policy(PILOT_POLICY_PATH)
_DEFAULT = load_policy(DEFAULT_POLICY_PATH)
_HASHES: Final = (_PILOT.content_hash, _DEFAULT.content_hash)  # computed once: not cheap
_SIGNALS = sorted(_PILOT.signals)
_LABELS = sorted({label for s in _PILOT.signals.values() for label in s.attributes})
_TASKS = sorted(aggregation_tasks(_DEFAULT))
_TIERS = [t.value for t in Tier]
_COUNTER: Final = counter_aggregate()
"""The kit's valid counter release (made once: an OpenDP release costs a millisecond)."""
_MECHANISMS = ["discrete_laplace", "laplace", "discrete_gaussian", "gaussian"]

_ZONES = st.sampled_from(
    [UTC, timezone(timedelta(hours=14)), timezone(timedelta(hours=-12, minutes=-30))]
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=6,
)
"""Any JSON value: what a field holds when its type is wrong."""

_floats = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0.0, -0.0, 1.0, 1e308, -1e308, 5e-324, 2.0**53 + 1]),
)


def _times(base: datetime) -> st.SearchStrategy[str]:
    near = st.integers(-(10**7), 10**7).map(lambda s: base + timedelta(seconds=s))
    edge = st.datetimes(
        min_value=datetime(1, 1, 1),
        max_value=datetime(9999, 12, 31, 23, 59, 59, 999_999),
        timezones=_ZONES,
    )
    return st.one_of(st.just(base), near, edge).map(datetime.isoformat)


def _noise() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            "mechanism": st.sampled_from(_MECHANISMS),
            "scale": _floats,
            "lower": _floats,
            "upper": _floats,
        },
        optional={"epsilon": _floats, "rho": _floats},
    )


def _signal() -> st.SearchStrategy[str]:
    return st.sampled_from(_SIGNALS) | st.from_regex(r"[a-z][a-z0-9_.]{0,20}", fullmatch=True)


def _aggregate() -> st.SearchStrategy[dict[str, Any]]:
    common = {
        "signal": _signal(),
        "tier": st.sampled_from(_TIERS),
        "attributes": st.dictionaries(
            st.sampled_from(_LABELS) | st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True),
            st.sampled_from(["local", "edge", "cloud", "other"]) | st.text(min_size=1, max_size=8),
            max_size=3,
        ),
    }
    counter = st.fixed_dictionaries(
        {**common, "kind": st.just("counter"), "value": _floats, "noise": _noise()}
    )
    total = st.fixed_dictionaries(
        {
            **common,
            "kind": st.just("total"),
            "measure": st.sampled_from(["count", "sum"]),
            "value": _floats,
            "noise": _noise(),
        }
    )
    histogram = st.lists(_floats, min_size=1, max_size=5, unique=True).flatmap(
        lambda bounds: st.fixed_dictionaries(
            {
                **common,
                "kind": st.just("histogram"),
                "bounds": st.just(sorted(bounds)),
                "counts": st.lists(_floats, min_size=len(bounds) + 1, max_size=len(bounds) + 1),
                "count_noise": _noise(),
            },
            optional={"sum": _floats, "sum_noise": _noise()},
        )
    )
    valid = _floats.map(lambda value: {**_COUNTER, "value": value})
    return st.one_of(valid, counter, total, histogram)


def _device(seed: bytes, region: str) -> Device:
    device = Device(region)
    device.key = SigningKey(seed)
    device.public_key = bytes(device.key.verify_key)
    device.device_id = device_id_for(device.public_key)
    return device


def devices(region: str) -> st.SearchStrategy[Device]:
    """Software-keyed devices of `region`, their keys drawn (reproducible)."""
    return st.binary(min_size=32, max_size=32).map(lambda seed: _device(seed, region))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _report() -> st.SearchStrategy[dict[str, Any]]:
    share = st.binary(max_size=96).map(_b64)
    return st.fixed_dictionaries(
        {
            "task": st.sampled_from(_TASKS) | st.from_regex(r"[a-z]{1,6}/cells", fullmatch=True),
            "tier": st.sampled_from(_TIERS),
            "report_id": st.binary(min_size=15, max_size=17).map(_b64),
            "public_share": share,
            "leader_share": share,
            "helper_share": share,
        }
    )


_FIELD_VALUES: Final[dict[str, st.SearchStrategy[Any]]] = {
    "envelope_id": st.uuids().map(str),
    "device_id": st.from_regex(r"[A-Za-z0-9_.:-]{1,12}", fullmatch=True),
    "sequence": st.integers(min_value=-1, max_value=2**64)
    | st.sampled_from([2**31 - 1, 2**31, 2**63 - 1, 2**63]),
    "sent_at": _times(WINDOW_START + _WINDOW + timedelta(seconds=5)),
    "window_start": _times(WINDOW_START),
    "window_end": _times(WINDOW_START + _WINDOW),
    "region": st.just("other-region"),
    "policy_hash": st.sampled_from([*_HASHES, "ab" * 32]),
    "app": st.fixed_dictionaries(
        {
            "name": st.from_regex(r"[A-Za-z0-9_.:-]{1,10}", fullmatch=True),
            "version": st.text(max_size=8),
        }
    ),
    "aggregates": st.lists(_aggregate(), max_size=4),
    "reports": st.lists(_report(), max_size=2),
    "consent_hash": st.none() | st.just("c0" * 32),
    "consented_tiers": st.lists(st.sampled_from(_TIERS), max_size=4),
    "suppressed": st.dictionaries(_signal(), st.integers(-1, 2**32), max_size=3),
    "client_report": st.none()
    | st.fixed_dictionaries(
        {
            "since": st.none() | _times(WINDOW_START),
            "counts": st.dictionaries(
                st.from_regex(r"[a-z0-9_]{1,12}(:[A-Za-z0-9_.-]{1,8})?", fullmatch=True),
                st.integers(-1, 2**32),
                max_size=3,
            ),
        }
    ),
}
"""Each field's domain and edges: what it may be replaced with (keeping the valid
value is the other choice: the field is not drawn)."""

_REPLACEMENTS: Final = {name: values | json_values for name, values in _FIELD_VALUES.items()}
_FIELDS: Final = st.lists(st.sampled_from(sorted(_FIELD_VALUES)), max_size=4, unique=True)


def base_envelope(device: Device) -> dict[str, Any]:
    """A valid envelope of `device` under the pilot policy, received at `RECEIVED_AT`."""
    return {
        "schema_version": 1,
        "envelope_id": "00000000-0000-4000-8000-000000000000",
        "device_id": device.device_id,
        "sequence": 1,
        "sent_at": (WINDOW_START + _WINDOW + timedelta(seconds=5)).isoformat(),
        "window_start": WINDOW_START.isoformat(),
        "window_end": (WINDOW_START + _WINDOW).isoformat(),
        "region": device.region,
        "policy_hash": _HASHES[0],
        "app": {"name": "demo-app", "version": "1.0.0"},
        "aggregates": [dict(_COUNTER)],
        "consent_hash": "c0" * 32,
        "consented_tiers": ["health", "performance"],
    }


@st.composite
def envelopes(draw: st.DrawFn, device: Device) -> dict[str, Any]:
    """A valid envelope of `device` with up to four fields replaced (by a value of their
    domain, an edge, or another JSON type) and perhaps one removed."""
    env = base_envelope(device)
    env["envelope_id"] = str(draw(st.uuids()))
    for name in draw(_FIELDS):
        env[name] = draw(_REPLACEMENTS[name] if draw(st.booleans()) else _FIELD_VALUES[name])
    if draw(st.integers(0, 15)) == 0:
        env.pop(draw(st.sampled_from(sorted(env))))
    return env


def _signed(device: Device, payload: bytes) -> st.SearchStrategy[bytes]:
    """The SignedEnvelope over `payload`: valid, or with a field of its own replaced."""
    valid = st.just(device.signed(payload))

    def broken(field: str, value: Any) -> bytes:
        signed = json.loads(device.signed(payload))
        signed[field] = value
        return json.dumps(signed).encode()

    mutated = st.builds(
        broken,
        st.sampled_from(["v", "alg", "public_key", "payload", "signature"]),
        st.sampled_from(["ed25519", "ecdsa-p256"]) | st.binary(max_size=80).map(_b64) | json_values,
    )
    return st.one_of(valid, mutated, st.binary(max_size=64))


@st.composite
def items(draw: st.DrawFn, device: Device, ingest_public_key: Any) -> str:
    """A batch item: mostly a sealed, signed envelope from `envelopes`, sometimes a
    broken signed layer, raw bytes sealed, or text that is not base64 at all."""
    kind = draw(st.integers(0, 19))
    if kind == 0:
        return draw(st.text(max_size=40))
    payload = json.dumps(draw(envelopes(device))).encode()
    signed = draw(_signed(device, payload)) if kind == 1 else device.signed(payload)
    return seal(ingest_public_key, signed)


_DELETION_VALUES: Final[dict[str, st.SearchStrategy[Any]]] = {
    "schema_version": st.integers(0, 2),
    "request_id": st.uuids().map(str),
    "device_id": _FIELD_VALUES["device_id"],
    "region": _FIELD_VALUES["region"],
    "tier": st.sampled_from(_TIERS),
    "requested_at": _times(RECEIVED_AT),
    "consent_hash": st.from_regex(r"[0-9a-f]{64}", fullmatch=True),
    "consent_version": st.integers(-1, 2**64),
}


@st.composite
def deletion_requests(draw: st.DrawFn, device: Device) -> dict[str, Any]:
    """A valid `DeletionRequestV1` of `device` with up to three fields replaced."""
    request: dict[str, Any] = {
        "schema_version": 1,
        "request_id": str(draw(st.uuids())),
        "device_id": device.device_id,
        "region": device.region,
        "tier": "performance",
        "requested_at": RECEIVED_AT.isoformat(),
        "consent_hash": "c1" * 32,
        "consent_version": 2,
    }
    names = draw(st.lists(st.sampled_from(sorted(_DELETION_VALUES)), max_size=3, unique=True))
    for name in names:
        values = _DELETION_VALUES[name]
        request[name] = draw(values | json_values if draw(st.booleans()) else values)
    return request
