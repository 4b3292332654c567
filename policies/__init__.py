"""Declarative policy files and their typed loader."""

from policies._errors import PolicyError
from policies._loader import DEFAULT_POLICY_PATH, load_policy
from policies._model import (
    OTHER,
    ConsentPolicy,
    CounterSignal,
    HistogramSignal,
    MechanismChoice,
    Policy,
    PrivacyCaps,
    RetentionPolicy,
    Signal,
    TierConsent,
)

__all__ = [
    "DEFAULT_POLICY_PATH",
    "OTHER",
    "ConsentPolicy",
    "CounterSignal",
    "HistogramSignal",
    "MechanismChoice",
    "Policy",
    "PolicyError",
    "PrivacyCaps",
    "RetentionPolicy",
    "Signal",
    "TierConsent",
    "load_policy",
]
