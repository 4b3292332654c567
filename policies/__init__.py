"""Declarative policy files and their typed loader."""

from policies._errors import PolicyError
from policies._loader import DEFAULT_POLICY_PATH, load_policy
from policies._model import OTHER, CounterSignal, HistogramSignal, Policy, Signal

__all__ = [
    "DEFAULT_POLICY_PATH",
    "OTHER",
    "CounterSignal",
    "HistogramSignal",
    "Policy",
    "PolicyError",
    "Signal",
    "load_policy",
]
