"""Declarative policy files and their typed loader."""

from policies._attestation import (
    DEFAULT_ATTESTATION_POLICY_PATH,
    AttestationPolicy,
    PcrRule,
    load_attestation_policy,
)
from policies._errors import PolicyError
from policies._loader import DEFAULT_POLICY_PATH, PILOT_POLICY_PATH, load_policy
from policies._model import (
    FINGERPRINT_DIGITS,
    OTHER,
    ConsentPolicy,
    CounterSignal,
    FingerprintPolicy,
    HistogramSignal,
    MechanismChoice,
    Policy,
    PrivacyCaps,
    RetentionPolicy,
    Signal,
    TierConsent,
    fingerprint_bucket_name,
)

__all__ = [
    "DEFAULT_ATTESTATION_POLICY_PATH",
    "DEFAULT_POLICY_PATH",
    "FINGERPRINT_DIGITS",
    "OTHER",
    "PILOT_POLICY_PATH",
    "AttestationPolicy",
    "ConsentPolicy",
    "CounterSignal",
    "FingerprintPolicy",
    "HistogramSignal",
    "MechanismChoice",
    "PcrRule",
    "Policy",
    "PolicyError",
    "PrivacyCaps",
    "RetentionPolicy",
    "Signal",
    "TierConsent",
    "fingerprint_bucket_name",
    "load_attestation_policy",
    "load_policy",
]
