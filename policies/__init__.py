"""Declarative policy files and their typed loader."""

from policies._attestation import (
    DEFAULT_ATTESTATION_POLICY_PATH,
    AttestationPolicy,
    PcrRule,
    load_attestation_policy,
)
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
from policies._tasks import AggregationTask, TaskPart, aggregation_tasks, cell_labels, task_context

__all__ = [
    "DEFAULT_ATTESTATION_POLICY_PATH",
    "DEFAULT_POLICY_PATH",
    "FINGERPRINT_DIGITS",
    "OTHER",
    "PILOT_POLICY_PATH",
    "AggregationPolicy",
    "AggregationTask",
    "AttestationPolicy",
    "ConsentPolicy",
    "CounterSignal",
    "FingerprintPolicy",
    "HelperEndpoint",
    "HistogramSignal",
    "MechanismChoice",
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
    "cell_labels",
    "dump_policy",
    "fingerprint_bucket_name",
    "load_attestation_policy",
    "load_policy",
    "task_context",
]
