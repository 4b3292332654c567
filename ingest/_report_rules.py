"""What the ingest (the leader) checks of an envelope's Prio3 reports before accepting it.

Pure logic on the policies the ingest serves. A report is input, not truth: its task
must be one of the named policy's aggregation tasks, its tier the one the policy gives
that signal (a device cannot relabel a signal to dodge a tier rule), its shares exactly
the sizes that task's Prio3 encoding has (nothing else decodes, and an oversized share
would only cost the aggregators work); the envelope's window must be exactly one
aligned policy window (every envelope's, reports or not), the reports' batch. The proof
itself is checked later, by the leader and the helper together; the shares reveal
nothing here.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from nacl.public import PrivateKey, SealedBox
from quietwire_prio import Prio3Error

from client._shares import task_vdaf
from ingest._release_rules import ReleaseShape, release_problem, release_shapes
from ingest._windows import AlignedWindow, aligned_window
from policies import AggregationTask, Policy, aggregation_tasks, task_context
from schemas import (
    CounterAggregate,
    EnvelopeV1,
    HelperShareV1,
    HistogramAggregate,
    RejectReason,
    Tier,
    TotalAggregate,
)

__all__ = ["ReportProblem", "ReportRules", "TaskShape"]

# A sealed helper share is the HelperShareV1 JSON plus the box's 48 bytes; its JSON
# varies only by a few characters (the window's ISO form), so allow this much slack.
_HELPER_SLACK = 256


@dataclass(frozen=True, slots=True)
class TaskShape:
    """One task and the exact encoded sizes of its report's shares."""

    task: AggregationTask
    public_bytes: int
    leader_bytes: int
    helper_max_bytes: int


@dataclass(frozen=True, slots=True)
class ReportProblem:
    """Why an envelope's reports are refused."""

    reason: RejectReason
    detail: str


def _shape(policy: Policy, task: AggregationTask) -> TaskShape:
    """Measure the sizes by sharding an all-zero measurement once, at startup."""
    vdaf = task_vdaf(task)
    nonce = secrets.token_bytes(16)
    public, leader, helper = vdaf.shard(
        task_context(policy.content_hash, task.id), [0] * task.length, nonce
    )
    sealed_plain = HelperShareV1(
        policy_hash=policy.content_hash,
        task=task.id,
        report_id=nonce,
        window_start=datetime(2000, 1, 1, tzinfo=UTC),
        share=helper,
    )
    probe = SealedBox(PrivateKey.generate().public_key).encrypt(
        sealed_plain.model_dump_json().encode()
    )
    return TaskShape(task, len(public), len(leader), len(probe) + _HELPER_SLACK)


class ReportRules:
    """The report checks for every policy the ingest serves (by content hash)."""

    __slots__ = ("_local", "_releases", "_shapes", "_window")

    def __init__(self, policies: Iterable[Policy]) -> None:
        self._shapes: dict[str, dict[str, TaskShape]] = {}
        self._window: dict[str, int] = {}
        # signal -> (privacy model, tier) per policy, for the envelope's local releases.
        self._local: dict[str, dict[str, tuple[str, Tier]]] = {}
        self._releases: dict[str, dict[str, ReleaseShape]] = {}
        for policy in policies:
            self._releases[policy.content_hash] = release_shapes(policy)
            self._local[policy.content_hash] = {
                name: (spec.privacy_model, spec.tier) for name, spec in policy.signals.items()
            }
            try:
                shapes = {t.id: _shape(policy, t) for t in aggregation_tasks(policy).values()}
            except Prio3Error as exc:  # a policy whose task Prio3 cannot build
                raise ValueError(f"policy {policy.content_hash[:12]}: {exc}") from exc
            self._shapes[policy.content_hash] = shapes
            self._window[policy.content_hash] = policy.window_seconds

    def knows(self, policy_hash: str) -> bool:
        """Whether the ingest holds this policy's file (not only its hash)."""
        return policy_hash in self._shapes

    def check(self, env: EnvelopeV1) -> datetime | ReportProblem | None:
        """The reports' batch start if they pass, a problem if not, None if none.

        A policy served in full also has the envelope's window checked (exactly one
        aligned policy window, `ingest._windows`) and its local releases: each must be of a
        signal it declares, under the local model, in that signal's tier. A local
        release of an aggregate-model signal would bypass secure aggregation (and mix
        a device's own noise claims into the fleet aggregates), so it is refused.
        """
        seconds = self._window.get(env.policy_hash)
        window: AlignedWindow | None = None
        if seconds is not None:
            aligned = aligned_window(env.window_start, env.window_end, seconds)
            if isinstance(aligned, str):
                return ReportProblem(RejectReason.WINDOW_MISALIGNED, aligned)
            window = aligned
        if (problem := self._local_problem(env)) is not None:
            return problem
        if not env.reports:
            return None
        shapes = self._shapes.get(env.policy_hash)
        if shapes is None or window is None:
            return ReportProblem(
                RejectReason.UNKNOWN_TASK,
                f"policy {env.policy_hash[:12]}… is known to this ingest by hash only: "
                "reports need its policy file",
            )
        for report in env.reports:
            shape = shapes.get(report.task)
            if shape is None:
                return ReportProblem(
                    RejectReason.UNKNOWN_TASK,
                    f"task {report.task!r} is not an aggregation task of the policy",
                )
            if report.tier is not shape.task.tier:
                return ReportProblem(
                    RejectReason.REPORT_INVALID,
                    f"task {report.task!r} is tier {shape.task.tier.value}, "
                    f"not {report.tier.value}",
                )
            sizes = (len(report.public_share), len(report.leader_share))
            if sizes != (shape.public_bytes, shape.leader_bytes) or (
                len(report.helper_share) > shape.helper_max_bytes
            ):
                return ReportProblem(
                    RejectReason.REPORT_INVALID,
                    f"task {report.task!r}: shares of {sizes[0]}/{sizes[1]}/"
                    f"{len(report.helper_share)} bytes; the task's are {shape.public_bytes}/"
                    f"{shape.leader_bytes}/at most {shape.helper_max_bytes}",
                )
        return window.start

    def _local_problem(self, env: EnvelopeV1) -> ReportProblem | None:
        signals = self._local.get(env.policy_hash)
        if signals is None:
            return None
        for name in env.suppressed:
            if name not in signals:
                return ReportProblem(
                    RejectReason.SIGNAL_INVALID,
                    f"suppressed names signal {name!r}, which the policy does not declare",
                )
        # One release per signal and cell (and per total): a copy would count the device
        # twice in the fleet figures, past its contribution bound, for one charge.
        released: set[_Release] = set()
        for aggregate in env.aggregates:
            cell = _release_key(aggregate)
            if cell in released:
                return ReportProblem(
                    RejectReason.SIGNAL_INVALID,
                    f"signal {aggregate.signal!r}: the same {_describe(cell)} is released "
                    "twice in one envelope",
                )
            released.add(cell)
            declared = signals.get(aggregate.signal)
            if declared is None:
                return ReportProblem(
                    RejectReason.SIGNAL_INVALID,
                    f"signal {aggregate.signal!r} is not declared by the policy",
                )
            model, tier = declared
            if model != "local":
                return ReportProblem(
                    RejectReason.SIGNAL_INVALID,
                    f"signal {aggregate.signal!r} is under the aggregate model: it is sent "
                    "as Prio3 reports, never as a local release",
                )
            if aggregate.tier is not tier:
                return ReportProblem(
                    RejectReason.SIGNAL_INVALID,
                    f"signal {aggregate.signal!r} is tier {tier.value}, not {aggregate.tier.value}",
                )
            shape = self._releases[env.policy_hash][aggregate.signal]
            if (problem := release_problem(shape, aggregate)) is not None:
                return ReportProblem(
                    RejectReason.SIGNAL_INVALID, f"signal {aggregate.signal!r}: {problem}"
                )
        return None


_Release = tuple[str, str, frozenset[tuple[str, str]]]


def _release_key(aggregate: CounterAggregate | HistogramAggregate | TotalAggregate) -> _Release:
    """What one release covers: a signal's cell (its label set), or one of its totals."""
    if isinstance(aggregate, TotalAggregate):
        return (aggregate.signal, f"total ({aggregate.measure})", frozenset())
    return (aggregate.signal, "cell", frozenset(aggregate.attributes.items()))


def _describe(key: _Release) -> str:
    _, part, labels = key
    if part != "cell":
        return part
    return "cell " + (", ".join(f"{k}={v!r}" for k, v in sorted(labels)) or "(no labels)")
