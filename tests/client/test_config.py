"""Setup-time checks, the policy's mechanism choice, and recording from many threads."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from pydantic import ValidationError

from client import (
    MemoryTransport,
    ReleaseError,
    Telemetry,
    TelemetryConfig,
    TrueCounter,
)
from policies import CounterSignal
from schemas import AppInfo, CounterAggregate, HistogramAggregate, Mechanism, Tier
from tests.client.conftest import POLICY, MemoryIngest


def _config(tmp_path: Path, ingest: MemoryIngest, **kw: object) -> TelemetryConfig:
    base: dict[str, object] = {
        "app": AppInfo(name="demo-app", version="1.0"),
        "region": "eu-west",
        "policy": POLICY,
        "ingest_public_key": ingest.public_key,
        "transport": MemoryTransport(ingest.handle),
        "state_dir": tmp_path,
        "mode": "manual",
    }
    base.update(kw)
    return TelemetryConfig.model_validate(base)


def test_config_refuses_ambiguous_or_broken_settings(tmp_path: Path, ingest) -> None:
    with pytest.raises(ValidationError, match="exactly one of endpoint"):
        _config(tmp_path, ingest, endpoint="https://ingest.example")
    with pytest.raises(ValidationError, match="32 raw bytes"):
        _config(tmp_path, ingest, ingest_public_key=b"short")
    with pytest.raises(ValidationError, match="http"):
        _config(tmp_path, ingest, transport=None, endpoint="ftp://ingest.example")


def test_policy_mechanism_choice_is_honoured(tmp_path: Path, ingest, clock) -> None:
    mechanisms = POLICY.privacy.mechanisms.model_copy(
        update={"counter": Mechanism.LAPLACE, "histogram_counts": Mechanism.LAPLACE}
    )
    policy = POLICY.model_copy(
        update={"privacy": POLICY.privacy.model_copy(update={"mechanisms": mechanisms})}
    )
    qw = Telemetry(_config(tmp_path, ingest, policy=policy, clock=clock))
    qw.grant_consent(Tier.HEALTH)
    qw.grant_consent(Tier.PERFORMANCE)
    (envelope,) = qw.collect(clock.advance(hours=1))
    kinds = {
        a.noise.mechanism if isinstance(a, CounterAggregate) else a.count_noise.mechanism
        for a in envelope.aggregates
    }
    assert kinds == {Mechanism.LAPLACE}
    qw.shutdown(carry_open_window=False)


def test_unsupported_sum_mechanism_fails_at_setup(tmp_path: Path, ingest) -> None:
    mechanisms = POLICY.privacy.mechanisms.model_copy(
        update={"histogram_sum": Mechanism.DISCRETE_LAPLACE}
    )
    policy = POLICY.model_copy(
        update={"privacy": POLICY.privacy.model_copy(update={"mechanisms": mechanisms})}
    )
    with pytest.raises(ReleaseError, match="histogram sums"):
        Telemetry(_config(tmp_path, ingest, policy=policy))


def test_concurrent_adds_are_all_counted(tmp_path: Path, ingest, clock) -> None:
    policy = POLICY.model_copy(
        update={
            "signals": {
                "busy": CounterSignal(
                    privacy_model="local",
                    tier=Tier.HEALTH,
                    attributes={"k": ["a"]},
                    max_per_window=1_000_000,
                    epsilon=1,
                )
            }
        }
    )
    qw = Telemetry(_config(tmp_path, ingest, policy=policy, clock=clock))
    qw.grant_consent("health")
    counter = qw.counter("busy")
    bound = counter.bind(k="a")

    def work() -> None:
        for _ in range(20_000):
            counter.add(1, k="a")
            bound.add(2)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    (window,) = qw.collect_with_truth(clock.advance(hours=1))
    values = {t.attributes["k"]: t.value for t in window.truth if isinstance(t, TrueCounter)}
    assert values == {"a": 4 * 20_000 * 3, "other": 0}
    assert not any(isinstance(a, HistogramAggregate) for a in window.envelope.aggregates)
    qw.shutdown(carry_open_window=False)
