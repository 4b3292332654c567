"""Declarative policy files and their typed loader."""

from policies._attestation import (
    DEFAULT_ATTESTATION_POLICY_PATH,
    AttestationPolicy,
    PcrRule,
    load_attestation_policy,
)
from policies._budget import EXACT_EPSILON, budget_day, epsilon_decimal, window_charge
from policies._canary import CanaryMetric, CanaryPolicy, CanaryUnavailable
from policies._charge import LocalPart, LocalParts, local_parts, neighbour_profiles, release_epsilon
from policies._cost import ChargePeriod, CloudPrice, CostPolicy, EdgePrice, LocalPrice
from policies._errors import PolicyError
from policies._loader import DEFAULT_POLICY_PATH, PILOT_POLICY_PATH, dump_policy, load_policy
from policies._model import (
    FINGERPRINT_DIGITS,
    OTHER,
    AggregationPolicy,
    ConsentPolicy,
    CounterSignal,
    FingerprintPolicy,
    HelperEndpoint,
    HistogramSignal,
    MechanismChoice,
    Policy,
    PrivacyCaps,
    PrivacyModel,
    RetentionPolicy,
    Signal,
    TierConsent,
    fingerprint_bucket_name,
)
from policies._otel import OtelInstrument, OtelPolicy
from policies._tasks import (
    SCALAR_PARTS,
    AggregationTask,
    TaskPart,
    aggregation_tasks,
    cell_labels,
    task_context,
)

__all__ = [
    "DEFAULT_ATTESTATION_POLICY_PATH",
    "DEFAULT_POLICY_PATH",
    "EXACT_EPSILON",
    "FINGERPRINT_DIGITS",
    "OTHER",
    "PILOT_POLICY_PATH",
    "SCALAR_PARTS",
    "AggregationPolicy",
    "AggregationTask",
    "AttestationPolicy",
    "CanaryMetric",
    "CanaryPolicy",
    "CanaryUnavailable",
    "ChargePeriod",
    "CloudPrice",
    "ConsentPolicy",
    "CostPolicy",
    "CounterSignal",
    "EdgePrice",
    "FingerprintPolicy",
    "HelperEndpoint",
    "HistogramSignal",
    "LocalPart",
    "LocalParts",
    "LocalPrice",
    "MechanismChoice",
    "OtelInstrument",
    "OtelPolicy",
    "PcrRule",
    "Policy",
    "PolicyError",
    "PrivacyCaps",
    "PrivacyModel",
    "RetentionPolicy",
    "Signal",
    "TaskPart",
    "TierConsent",
    "aggregation_tasks",
    "budget_day",
    "cell_labels",
    "dump_policy",
    "epsilon_decimal",
    "fingerprint_bucket_name",
    "load_attestation_policy",
    "load_policy",
    "local_parts",
    "neighbour_profiles",
    "release_epsilon",
    "task_context",
    "window_charge",
]
