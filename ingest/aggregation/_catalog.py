"""The policies an aggregator serves, and their tasks, by policy content hash.

An aggregator only verifies and sums reports of policies it was configured with: the
task (Prio3 shape, epsilon, minimum batch size) comes from its own copy of the policy,
never from the request, so a leader (or a device) cannot ask for a weaker task.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ingest._errors import ConfigurationError
from policies import AggregationTask, Policy, PolicyError, aggregation_tasks, load_policy

__all__ = ["TaskCatalog"]


@dataclass(frozen=True, slots=True)
class TaskCatalog:
    """Policies by content hash, each with its aggregation tasks by task id."""

    policies: Mapping[str, Policy]
    tasks: Mapping[str, Mapping[str, AggregationTask]]

    @classmethod
    def from_policies(cls, policies: Iterable[Policy]) -> TaskCatalog:
        """The catalog of `policies` (a policy listed twice counts once)."""
        by_hash = {p.content_hash: p for p in policies}
        if not by_hash:
            raise ConfigurationError("an aggregator needs at least one policy")
        return cls(by_hash, {h: aggregation_tasks(p) for h, p in by_hash.items()})

    @classmethod
    def from_files(cls, paths: Sequence[Path]) -> TaskCatalog:
        """Load the policy files; a bad file is a `ConfigurationError` naming it."""
        try:
            return cls.from_policies(load_policy(p) for p in paths)
        except PolicyError as exc:
            raise ConfigurationError(f"policy: {exc}") from exc

    def policy(self, policy_hash: str) -> Policy | None:
        """The policy of that hash, or None if this aggregator does not serve it."""
        return self.policies.get(policy_hash)

    def task(self, policy_hash: str, task_id: str) -> AggregationTask | None:
        """The task `task_id` of that policy, or None."""
        return self.tasks.get(policy_hash, {}).get(task_id)
