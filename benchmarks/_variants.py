"""The policy variants the benchmarks compare: epsilon scaled, and the local model.

- `scaled`: every signal's epsilon times a factor, and its task parts alike (they must
  add up to the epsilon), so each task keeps its share;
- `local_variant`: the same signals under `privacy_model: local`, the same bounds
  (`max_per_window`, `max_events_per_window`, the sum cap) and epsilons. What applies to
  the aggregate model only is dropped: the task parts (`parts`) and the per-cell parts'
  caps (`cell_max_events`, `cell_max_sum`); a local histogram splits its epsilon by
  `sum_share` and releases no total unless `total_share` says so (the default policy's
  does not).
"""

from __future__ import annotations

from policies import Policy

__all__ = ["local_variant", "scaled"]

_AGGREGATE_ONLY = ("parts", "cell_max_events", "cell_max_sum")


def scaled(policy: Policy, factor: float) -> Policy:
    """`policy` with every signal's epsilon and task parts times `factor`."""
    signals = {}
    for name, signal in policy.signals.items():
        data = signal.model_dump()
        data["epsilon"] = signal.epsilon * factor
        if signal.parts is not None:
            data["parts"] = {part: eps * factor for part, eps in signal.parts.items()}
        signals[name] = data
    return Policy.model_validate(policy.model_dump() | {"signals": signals})


def local_variant(policy: Policy) -> Policy:
    """`policy` with every signal under the local model (bounds and epsilons kept)."""
    signals = {}
    for name, signal in policy.signals.items():
        data = {k: v for k, v in signal.model_dump().items() if k not in _AGGREGATE_ONLY}
        signals[name] = data | {"privacy_model": "local"}
    return Policy.model_validate(policy.model_dump() | {"signals": signals})
