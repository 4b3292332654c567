"""Typed policy: the signal catalogue, the privacy guarantee, consent defaults, retention.

Attribute labels have a declared, finite domain: a released histogram's keys leak as
much as its counts, so the client releases every cell of the declared domain (zeros
included) and maps an undeclared value to `other` instead of sending it verbatim.

The guarantee a reviewer reads off a policy: every release of a signal costs that
signal's `epsilon` (pure DP); a device's releases compose by basic composition and are
capped per UTC day and over the device's lifetime (`privacy`); nothing of a tier leaves
a device before consent is recorded for it (`consent`); content-derived data is kept the
shortest time (`retention`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from policies._canary import CanaryPolicy, canary_reference_problem
from policies._cost import CostPolicy, cost_reference_problem
from policies._otel import OtelPolicy, otel_reference_problem
from schemas import Mechanism, Tier

__all__ = [
    "FINGERPRINT_DIGITS",
    "OTHER",
    "SECTIONS_REQUIRED_IN_FILES",
    "AggregationPolicy",
    "AttributeDomain",
    "ConsentPolicy",
    "CounterSignal",
    "FingerprintPolicy",
    "HelperEndpoint",
    "HistogramSignal",
    "MechanismChoice",
    "Policy",
    "PolicyKeyError",
    "PrivacyCaps",
    "PrivacyModel",
    "RetentionPolicy",
    "Signal",
    "TierConsent",
    "fingerprint_bucket_name",
]

OTHER = "other"

_NAME = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_.]*$", max_length=128)]
_LABEL = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_.]*$", max_length=64)]
_VALUE = Annotated[str, Field(min_length=1, max_length=128)]

AttributeDomain = dict[_LABEL, list[_VALUE]]

# Mechanisms whose privacy loss is a pure-DP epsilon; Gaussian noise only has a zCDP
# (or approximate-DP) guarantee and cannot be charged to a pure-DP ledger.
_PURE_DP_MECHANISMS = frozenset({Mechanism.LAPLACE, Mechanism.DISCRETE_LAPLACE})


class PolicyKeyError(ValueError):
    """A validation failure that knows which key (relative to its model) is at fault.

    Model-level checks span several fields; pydantic would place their error on the
    model itself. Raising this lets the loader name the exact key in the file.
    """

    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(reason)


PrivacyModel = Literal["aggregate", "local"]
"""How a signal's windows leave the device.

`aggregate`: the window's bounded measurement is split into two Prio3 secret shares,
one for the ingest (leader) and one for the helper (a second operator); only fleet sums
over at least `aggregation.min_batch_size` devices are revealed, with central DP noise
added by each aggregator. `local`: the device adds its own OpenDP noise (local DP).
"""


def _is_all_ones(n: int) -> bool:
    """True for 2**k - 1 (k >= 1): the L1 bounds a Prio3 proof can enforce exactly."""
    return n >= 1 and (n + 1) & n == 0


class _SignalBase(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    tier: Tier
    privacy_model: PrivacyModel = Field(
        default="aggregate",
        description="aggregate (Prio3 shares, central DP; the default of the health and "
        "performance tiers) or local (per-device OpenDP release; the content tier's default)",
    )
    unit: str = Field(default="1", max_length=32)
    description: str = ""
    attributes: AttributeDomain = Field(default_factory=dict)
    epsilon: float = Field(gt=0.0, le=10.0, description="pure-DP loss charged per window")
    parts: dict[str, Annotated[float, Field(gt=0.0, le=10.0)]] | None = Field(
        default=None,
        description="aggregate model: the epsilon of each Prio3 task part (counter: cells, "
        "total; histogram: buckets, counts, sums, total_events, total_sum); they add up to "
        "epsilon, and a part not listed is not released. Unset: every epsilon to cells "
        "(counter), a third each to buckets, counts and sums (histogram)",
    )

    @model_validator(mode="before")
    @classmethod
    def _default_model(cls, data: Any) -> Any:
        # Content-derived signals default to the local model: the content tier is opt-in
        # and TPM-only, and usually too sparse for a batch of min_batch_size devices.
        if isinstance(data, dict) and "privacy_model" not in data:
            tier = data.get("tier")
            if tier in (Tier.CONTENT, Tier.CONTENT.value):
                return {**data, "privacy_model": "local"}
        return data

    def _check_parts(self, allowed: tuple[str, ...]) -> None:
        if self.parts is None:
            return
        if self.privacy_model != "aggregate":
            raise PolicyKeyError("parts", "parts split an aggregate signal's epsilon only")
        unknown = sorted(set(self.parts) - set(allowed))
        if unknown:
            raise PolicyKeyError(
                "parts", f"unknown part(s) {unknown}; this kind has {list(allowed)}"
            )
        total = math.fsum(self.parts.values())
        if not math.isclose(total, self.epsilon, rel_tol=1e-9, abs_tol=1e-12):
            raise PolicyKeyError(
                "parts",
                f"the parts add up to {total:g}, not to the signal's epsilon {self.epsilon:g}",
            )

    @model_validator(mode="after")
    def _check_domains(self) -> _SignalBase:
        for label, values in self.attributes.items():
            key = f"attributes.{label}"
            if not values:
                raise PolicyKeyError(key, f"attribute {label!r} declares an empty domain")
            if len(set(values)) != len(values):
                raise PolicyKeyError(key, f"attribute {label!r} lists a value twice")
            if OTHER in values:
                raise PolicyKeyError(key, f"{OTHER!r} is implicit, do not list it")
        return self


_TOTAL_SHARE_DOC = (
    "share of epsilon spent on one scalar total over all cells (0: no total released); "
    "fleet totals from it are far less noisy than the sum of the per-cell releases"
)


def _check_aggregate_bound(key: str, bound: int) -> None:
    if not _is_all_ones(bound):
        up = (1 << bound.bit_length()) - 1
        down = (1 << (bound.bit_length() - 1)) - 1
        raise PolicyKeyError(
            key,
            f"an aggregate signal's bound must be 2**k - 1 (the Prio3 proof enforces "
            f"exactly that L1 bound), got {bound}: use {down} or {up}",
        )


def _check_no_total(total_share: float) -> None:
    if total_share != 0.0:
        raise PolicyKeyError(
            "total_share",
            "total_share splits a local release; an aggregate signal's total is a task "
            "part of its own (parts: total, or total_events and total_sum)",
        )


COUNTER_PARTS = ("cells", "total")
HISTOGRAM_PARTS = ("buckets", "counts", "sums", "total_events", "total_sum")


class CounterSignal(_SignalBase):
    """A count per window; one device adds at most `max_per_window` across all cells."""

    kind: Literal["counter"] = "counter"
    max_per_window: int = Field(ge=1, le=1_000_000)
    total_share: float = Field(default=0.0, ge=0.0, lt=1.0, description=_TOTAL_SHARE_DOC)

    @model_validator(mode="after")
    def _check_aggregate(self) -> CounterSignal:
        if self.privacy_model == "aggregate":
            _check_aggregate_bound("max_per_window", self.max_per_window)
            _check_no_total(self.total_share)
        self._check_parts(COUNTER_PARTS)
        return self

    def part_epsilons(self) -> dict[str, float]:
        """The epsilon of each released Prio3 part (aggregate model)."""
        return dict(self.parts) if self.parts is not None else {"cells": self.epsilon}


class HistogramSignal(_SignalBase):
    """A distribution per window: bucket counts plus a bounded sum for the mean."""

    kind: Literal["histogram"] = "histogram"
    buckets: list[float] = Field(min_length=1, max_length=64)
    max_events_per_window: int = Field(ge=1, le=1_000_000)
    value_range: tuple[float, float]
    sum_share: float = Field(
        default=0.5, gt=0.0, lt=1.0, description="share of epsilon spent on the sum"
    )
    total_share: float = Field(default=0.0, ge=0.0, lt=1.0, description=_TOTAL_SHARE_DOC)
    max_sum_per_window: float | None = Field(
        default=None,
        gt=0.0,
        description="cap on one device's sum of values per window (all cells); unset: "
        "max_events_per_window x max|value|. A cap near a heavy user's sum, far below "
        "that product, cuts the sums' noise by the same factor",
    )
    cell_max_events: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000,
        description="aggregate model: a window with more events is scaled down as a whole "
        "(events and sums alike, so each cell's mean is kept) before its per-cell parts "
        "(buckets, counts, sums) are shared; the totals keep max_events_per_window. "
        "Unset: max_events_per_window",
    )
    cell_max_sum: float | None = Field(
        default=None,
        gt=0.0,
        description="aggregate model: as cell_max_events, for the window's sum of values. "
        "Unset: the sum cap",
    )

    @model_validator(mode="after")
    def _check_buckets(self) -> HistogramSignal:
        if any(b <= a for a, b in zip(self.buckets, self.buckets[1:], strict=False)):
            raise PolicyKeyError("buckets", "buckets must be strictly increasing")
        lo, hi = self.value_range
        if not lo < hi:
            raise PolicyKeyError("value_range", "must be [low, high] with low < high")
        if not math.isfinite(self.sum_cap):
            raise PolicyKeyError(
                "value_range",
                "max_events_per_window x max|value| overflows to infinity: narrow the "
                "range or set max_sum_per_window",
            )
        if self.max_sum_per_window is not None and lo < 0.0:
            raise PolicyKeyError(
                "max_sum_per_window", "a sum cap needs non-negative values (value_range low >= 0)"
            )
        if self.privacy_model == "aggregate":
            _check_aggregate_bound("max_events_per_window", self.max_events_per_window)
            _check_no_total(self.total_share)
            if lo < 0.0:
                raise PolicyKeyError(
                    "value_range",
                    "an aggregate histogram's values must be >= 0 (its sums are shared as "
                    "bounded non-negative integers)",
                )
            if self.cell_max_events is not None:
                _check_aggregate_bound("cell_max_events", self.cell_max_events)
                if self.cell_max_events > self.max_events_per_window:
                    raise PolicyKeyError("cell_max_events", "must not exceed max_events_per_window")
            if self.cell_max_sum is not None and self.cell_max_sum > self.sum_cap:
                raise PolicyKeyError(
                    "cell_max_sum", f"must not exceed the sum cap {self.sum_cap:g}"
                )
        elif self.cell_max_events is not None or self.cell_max_sum is not None:
            raise PolicyKeyError(
                "cell_max_events" if self.cell_max_events is not None else "cell_max_sum",
                "cell caps apply to the aggregate model only",
            )
        self._check_parts(HISTOGRAM_PARTS)
        return self

    def part_epsilons(self) -> dict[str, float]:
        """The epsilon of each released Prio3 part (aggregate model)."""
        if self.parts is not None:
            return dict(self.parts)
        third = self.epsilon / 3.0
        while 3.0 * third > self.epsilon:  # never more than epsilon in floating point
            third = math.nextafter(third, 0.0)
        return {"buckets": third, "counts": third, "sums": third}

    @property
    def cell_events_cap(self) -> int:
        """Events a window keeps for its per-cell parts (aggregate model)."""
        return self.cell_max_events or self.max_events_per_window

    @property
    def cell_sum_cap(self) -> float:
        """Sum of values a window keeps for its per-cell parts (aggregate model)."""
        return self.cell_max_sum if self.cell_max_sum is not None else self.sum_cap

    @property
    def sum_cap(self) -> float:
        """The largest |sum of values| one device contributes in a window, all cells."""
        lo, hi = self.value_range
        product = self.max_events_per_window * max(abs(lo), abs(hi))
        cap = self.max_sum_per_window
        return product if cap is None else min(cap, product)


Signal = Annotated[CounterSignal | HistogramSignal, Field(discriminator="kind")]


class MechanismChoice(BaseModel):
    """Which OpenDP mechanism releases each kind of value."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    counter: Mechanism
    histogram_counts: Mechanism
    histogram_sum: Mechanism


class PrivacyCaps(BaseModel):
    """The per-device privacy budget.

    Accounting is pure differential privacy with basic composition: the loss of a set of
    releases is the sum of their epsilons. A device never spends more than
    `daily_epsilon` within one UTC day, nor more than `lifetime_epsilon` in total; a
    release that would cross either cap is suppressed (and the suppression counted).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    accounting: Literal["pure_dp"]
    daily_epsilon: float = Field(gt=0.0, le=100.0)
    lifetime_epsilon: float = Field(gt=0.0, le=1_000_000.0)
    mechanisms: MechanismChoice

    @model_validator(mode="after")
    def _check(self) -> PrivacyCaps:
        if self.lifetime_epsilon < self.daily_epsilon:
            raise PolicyKeyError(
                "lifetime_epsilon",
                f"lifetime cap {self.lifetime_epsilon} is smaller than the daily cap "
                f"{self.daily_epsilon}",
            )
        for field in ("counter", "histogram_counts", "histogram_sum"):
            mechanism = getattr(self.mechanisms, field)
            if mechanism not in _PURE_DP_MECHANISMS:
                raise PolicyKeyError(
                    f"mechanisms.{field}",
                    f"{mechanism.value} has no pure-DP guarantee; accounting is "
                    f"{self.accounting}, use laplace or discrete_laplace",
                )
        return self


class TierConsent(BaseModel):
    """What a tier may do before the user has decided.

    Only `denied` exists: Quietwire is opt-in, nothing of a tier leaves a device until
    consent for that tier is recorded. The field is spelled out so a reviewer reads the
    default in the file instead of trusting code.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    default: Literal["denied"]


class ConsentPolicy(BaseModel):
    """Consent defaults per tier, and the version of the consent notice users agree to.

    Raising `notice_version` (the text shown to users changed) makes every earlier
    grant stale: the app must ask again before that tier sends anything.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    notice_version: int = Field(ge=1)
    tiers: dict[Tier, TierConsent]

    @model_validator(mode="after")
    def _check(self) -> ConsentPolicy:
        missing = [t.value for t in Tier if t not in self.tiers]
        if missing:
            raise PolicyKeyError("tiers", f"missing consent defaults for tier(s) {missing}")
        return self


class RetentionPolicy(BaseModel):
    """How many days each tier's data is kept (on the spool and in the warehouse).

    Content-derived data gets the shortest retention of all tiers.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    days: dict[Tier, Annotated[int, Field(ge=1, le=36_500)]]

    @model_validator(mode="after")
    def _check(self) -> RetentionPolicy:
        missing = [t.value for t in Tier if t not in self.days]
        if missing:
            raise PolicyKeyError("days", f"missing retention for tier(s) {missing}")
        content = self.days[Tier.CONTENT]
        longer = [t.value for t, d in self.days.items() if t is not Tier.CONTENT and d < content]
        if longer:
            raise PolicyKeyError(
                "days.content",
                f"content retention ({content} days) must be the shortest, "
                f"but {longer} keep data for less",
            )
        return self

    def for_tier(self, tier: Tier) -> int:
        """Retention of `tier`, in days."""
        return self.days[tier]


FINGERPRINT_DIGITS = 16
"""Hex digits of an error fingerprint that a policy lists as a known fingerprint."""

_KNOWN_FINGERPRINT = re.compile(rf"^[0-9a-f]{{{FINGERPRINT_DIGITS}}}$")
_BUCKET = re.compile(r"^b([0-9]{2,3})$")


class FingerprintPolicy(BaseModel):
    """Which counter signal counts exceptions by error fingerprint, and how.

    A fingerprint is a keyed hash: an unbounded domain, so it is never a label value as
    such. The signal's `label` attribute declares a closed domain of two kinds of value:
    known fingerprints (their first 16 hex digits, listed after triage) and hash buckets
    `b00`..`bNN` (contiguous). An exception whose fingerprint is listed counts under it;
    any other counts under its bucket (the fingerprint modulo the number of buckets), or
    `other` if no buckets are declared. The signal may declare other labels too (route,
    model version): the app passes them to `record_exception`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    signal: _NAME
    label: _LABEL = "fingerprint"


def _check_fingerprints(policy_signals: dict[str, Signal], fp: FingerprintPolicy) -> None:
    signal = policy_signals.get(fp.signal)
    key = "fingerprints.signal"
    if signal is None:
        raise PolicyKeyError(key, f"signal {fp.signal!r} is not in the catalogue")
    if not isinstance(signal, CounterSignal):
        raise PolicyKeyError(key, f"signal {fp.signal!r} must be a counter")
    if signal.tier is not Tier.HEALTH:
        raise PolicyKeyError(key, f"signal {fp.signal!r} must be in the health tier")
    if fp.label not in signal.attributes:
        declared = ", ".join(repr(a) for a in signal.attributes) or "none"
        raise PolicyKeyError(
            "fingerprints.label",
            f"signal {fp.signal!r} must declare the fingerprint label {fp.label!r} "
            f"(it declares {declared})",
        )
    values = signal.attributes[fp.label]
    buckets = {v for v in values if _BUCKET.match(v)}
    bad = [v for v in values if not (_KNOWN_FINGERPRINT.match(v) or _BUCKET.match(v))]
    where = f"signals.{fp.signal}.attributes.{fp.label}"
    if bad:
        raise PolicyKeyError(
            where,
            f"values must be known fingerprints ({FINGERPRINT_DIGITS} hex digits) or "
            f"buckets b00..bNN, not {bad[:3]}",
        )
    if buckets != {fingerprint_bucket_name(i) for i in range(len(buckets))}:
        raise PolicyKeyError(where, "hash buckets must be b00, b01, ... without gaps")


def fingerprint_bucket_name(index: int) -> str:
    """The label value of hash bucket `index`: b00, b01, ..., b99, b100, ..."""
    return f"b{index:02d}"


def _default_privacy() -> PrivacyCaps:
    # The largest per-window epsilon a signal may declare, so any valid catalogue fits.
    laplace = Mechanism.DISCRETE_LAPLACE
    return PrivacyCaps(
        accounting="pure_dp",
        daily_epsilon=10.0,
        lifetime_epsilon=3650.0,
        mechanisms=MechanismChoice(
            counter=laplace, histogram_counts=laplace, histogram_sum=Mechanism.LAPLACE
        ),
    )


def _default_consent() -> ConsentPolicy:
    return ConsentPolicy(notice_version=1, tiers={t: TierConsent(default="denied") for t in Tier})


def _default_retention() -> RetentionPolicy:
    return RetentionPolicy(days={Tier.HEALTH: 395, Tier.PERFORMANCE: 90, Tier.CONTENT: 7})


_X25519_KEY_BYTES = 32


class HelperEndpoint(BaseModel):
    """The helper: the second aggregator, run by another operator.

    Devices seal each report's helper share to `public_key` (X25519, base64), so the
    leader relays shares it cannot read; the leader calls the helper at `url`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    url: str = Field(pattern=r"^https?://[^\s]+$", max_length=512)
    public_key: str = Field(description="X25519 public key, standard base64 of 32 bytes")

    @field_validator("public_key")
    @classmethod
    def _check_key(cls, value: str) -> str:
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("not standard base64") from None
        if len(raw) != _X25519_KEY_BYTES:
            raise ValueError(f"must decode to {_X25519_KEY_BYTES} bytes, got {len(raw)}")
        return value

    @property
    def public_key_bytes(self) -> bytes:
        """The raw 32-byte X25519 key."""
        return base64.b64decode(self.public_key)


class AggregationPolicy(BaseModel):
    """Secure aggregation (Prio3, two aggregators) for the `aggregate` signals.

    No fleet figure of fewer than `min_batch_size` devices' reports is ever revealed.
    A histogram's sums are shared as integers of `sum_bits` bits: one unit is the
    signal's sum cap / (2**sum_bits - 1), and values are rounded to units at random
    (unbiased), so the quantisation adds no bias and far less error than the noise.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    min_batch_size: int = Field(default=100, ge=2, le=10_000_000)
    sum_bits: int = Field(default=16, ge=4, le=32)
    helper: HelperEndpoint | None = None


# Sections a policy *file* must spell out (the loader enforces it), so the guarantee
# can be read off the file. Policies built in code (tests) may rely on the defaults.
SECTIONS_REQUIRED_IN_FILES = ("privacy", "consent", "retention")


class Policy(BaseModel):
    """The whole policy a fleet runs under. Its content hash travels in every envelope."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    version: Literal[1]
    window_seconds: int = Field(ge=1, le=86_400)
    signals: dict[_NAME, Signal] = Field(min_length=1)
    privacy: PrivacyCaps = Field(default_factory=_default_privacy)
    consent: ConsentPolicy = Field(default_factory=_default_consent)
    retention: RetentionPolicy = Field(default_factory=_default_retention)
    fingerprints: FingerprintPolicy | None = None
    aggregation: AggregationPolicy = Field(default_factory=AggregationPolicy)
    cost: CostPolicy | None = None
    canary: CanaryPolicy | None = None
    otel: OtelPolicy | None = None

    @model_validator(mode="after")
    def _check_otel(self) -> Policy:
        if self.otel is not None:
            problem = otel_reference_problem(self.otel, self.signals)
            if problem is not None:
                raise PolicyKeyError(f"otel.{problem[0]}", problem[1])
        return self

    @model_validator(mode="after")
    def _check_canary(self) -> Policy:
        if self.canary is not None:
            problem = canary_reference_problem(self.canary, self.signals)
            if problem is not None:
                raise PolicyKeyError(f"canary.{problem[0]}", problem[1])
        return self

    @model_validator(mode="after")
    def _check_cost(self) -> Policy:
        if self.cost is not None:
            problem = cost_reference_problem(self.cost, self.signals)
            if problem is not None:
                raise PolicyKeyError(f"cost.{problem[0]}", problem[1])
        return self

    @model_validator(mode="after")
    def _check_caps(self) -> Policy:
        if self.fingerprints is not None:
            _check_fingerprints(self.signals, self.fingerprints)
        # A daily cap below one window's charge would silently suppress that signal
        # forever: almost certainly a typo, so refuse the file.
        cap = self.privacy.daily_epsilon
        for name, signal in self.signals.items():
            if signal.epsilon > cap:
                raise PolicyKeyError(
                    "privacy.daily_epsilon",
                    f"daily cap {cap} is smaller than one window's epsilon "
                    f"{signal.epsilon} of signal {name!r}",
                )
        return self

    @property
    def planned_daily_epsilon(self) -> float:
        """What a device spends per UTC day if every tier is consented and every window
        is released once: the sum of the signals' epsilons times the windows per day.

        At or below `privacy.daily_epsilon`, a device that runs all day is never
        suppressed; releases beyond the plan (a window cut short at shutdown, then
        finished after a restart) are what the cap suppresses.
        """
        windows_per_day = -(-86_400 // self.window_seconds)
        return sum(s.epsilon for s in self.signals.values()) * windows_per_day

    @property
    def aggregate_signals(self) -> list[str]:
        """Names of the signals under the `aggregate` privacy model, sorted."""
        return sorted(n for n, s in self.signals.items() if s.privacy_model == "aggregate")

    @property
    def content_hash(self) -> str:
        """SHA-256 of the canonical JSON of the validated policy (formatting-independent).

        Covers every section (signals, privacy caps, consent defaults, retention), so a
        change to any of them is a different policy; except `cost` and `canary`, which
        only analytics reads: a price or threshold change must not make devices'
        envelopes and Prio3 tasks (keyed by this hash) those of another policy.
        """
        # `otel` is hashed: it decides what goes into a signal and in which unit, so two
        # devices with different mappings send different things. Left out when absent,
        # so a policy without it keeps the hash it had before the section existed.
        exclude = {"cost", "canary"} if self.otel is not None else {"cost", "canary", "otel"}
        data = self.model_dump(mode="json", exclude=exclude)
        canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()
