"""The ingest's checks of Prio3 reports before it accepts an envelope that carries them."""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from nacl.public import PrivateKey

from client._shares import ReportSharer
from ingest import Accepted, EnvelopeVerifier, Rejected
from ingest._report_rules import ReportRules
from policies import PILOT_POLICY_PATH, aggregation_tasks, load_policy
from schemas import PrioReport, RejectReason
from tests.ingest.kit import FIRST_WINDOW, Device, counter_aggregate

POLICY = load_policy()
TASKS = aggregation_tasks(POLICY)
DAY = FIRST_WINDOW  # the kit's first window (one day)
NOW = DAY + timedelta(days=1, minutes=1)
HELPER = PrivateKey.generate()


@pytest.fixture
def key() -> PrivateKey:
    return PrivateKey.generate()


@pytest.fixture
def verifier(key: PrivateKey) -> EnvelopeVerifier:
    return EnvelopeVerifier(
        key,
        region="eu-test",
        known_policy_hashes=[POLICY.content_hash],
        report_rules=ReportRules([POLICY]),
    )


def _report(task: str = "inference.errors/cells", **changes: Any) -> dict[str, Any]:
    sharer = ReportSharer(POLICY.content_hash, bytes(HELPER.public_key))
    spec = TASKS[task]
    report = sharer.report(spec, [0] * spec.length, DAY)
    data: dict[str, Any] = report.model_dump(mode="json")
    data.update(changes)
    return data


def _envelope(device: Device, reports: list[dict[str, Any]], **overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "window_start": DAY.isoformat(),
        "window_end": (DAY + timedelta(days=1)).isoformat(),
        "sent_at": (DAY + timedelta(days=1, seconds=5)).isoformat(),
        "aggregates": [],
        "reports": reports,
        "policy_hash": POLICY.content_hash,
    }
    return device.envelope(**(fields | overrides))


def _verify(
    verifier: EnvelopeVerifier, key: PrivateKey, env: dict[str, Any], at: datetime = NOW
) -> Accepted | Rejected:
    device = Device("eu-test")
    env["device_id"] = device.device_id
    return verifier.verify(device.item(key.public_key, env), received_at=at)


def test_valid_reports_are_accepted_and_stamped_with_their_batch(
    verifier: EnvelopeVerifier, key: PrivateKey
) -> None:
    env = _envelope(Device(), [_report(), _report("inference.requests/cells")])
    verdict = _verify(verifier, key, env)
    assert isinstance(verdict, Accepted), verdict
    assert verdict.item.batch_start == DAY
    assert len(verdict.item.envelope.reports) == 2


def _reason(verdict: object) -> RejectReason:
    assert isinstance(verdict, Rejected), verdict
    return verdict.reason


def test_a_task_the_policy_does_not_have_is_refused(
    verifier: EnvelopeVerifier, key: PrivateKey
) -> None:
    env = _envelope(Device(), [_report(task="inference.errors/cells") | {"task": "x.y/cells"}])
    assert _reason(_verify(verifier, key, env)) is RejectReason.UNKNOWN_TASK


def test_a_relabelled_tier_is_refused(verifier: EnvelopeVerifier, key: PrivateKey) -> None:
    # inference.requests is performance: a device cannot send it as health.
    env = _envelope(Device(), [_report("inference.requests/cells", tier="health")])
    verdict = _verify(verifier, key, env)
    assert _reason(verdict) is RejectReason.REPORT_INVALID
    assert "is tier performance" in verdict.detail  # type: ignore[union-attr]


@pytest.mark.parametrize("field", ["public_share", "leader_share"])
def test_shares_of_the_wrong_size_are_refused(
    verifier: EnvelopeVerifier, key: PrivateKey, field: str
) -> None:
    report = _report()
    raw = base64.urlsafe_b64decode(report[field])
    report[field] = base64.b64encode(raw + b"\x00" * 16).decode()
    assert _reason(_verify(verifier, key, _envelope(Device(), [report]))) is (
        RejectReason.REPORT_INVALID
    )


def test_an_oversized_helper_share_is_refused(verifier: EnvelopeVerifier, key: PrivateKey) -> None:
    report = _report(helper_share=base64.b64encode(b"\x00" * 8192).decode())
    assert _reason(_verify(verifier, key, _envelope(Device(), [report]))) is (
        RejectReason.REPORT_INVALID
    )


def test_a_window_crossing_two_batches_is_refused(
    verifier: EnvelopeVerifier, key: PrivateKey
) -> None:
    env = _envelope(
        Device(),
        [_report()],
        window_start=(DAY + timedelta(hours=12)).isoformat(),
        window_end=(DAY + timedelta(hours=36)).isoformat(),
        sent_at=(DAY + timedelta(hours=36, seconds=1)).isoformat(),
    )
    verdict = _verify(verifier, key, env, at=DAY + timedelta(hours=37))
    assert _reason(verdict) is RejectReason.WINDOW_MISALIGNED
    assert "not one aligned" in verdict.detail  # type: ignore[union-attr]


def test_reports_need_the_policy_file_not_only_its_hash(key: PrivateKey) -> None:
    hash_only = EnvelopeVerifier(key, region="eu-test", known_policy_hashes=[POLICY.content_hash])
    env = _envelope(Device(), [_report()])
    assert _reason(_verify(hash_only, key, env)) is RejectReason.UNKNOWN_TASK


def test_report_tiers_need_consent(verifier: EnvelopeVerifier, key: PrivateKey) -> None:
    env = _envelope(Device(), [_report()], consented_tiers=["performance"])
    assert _reason(_verify(verifier, key, env)) is RejectReason.CONSENT_MISSING


def test_report_tiers_count_for_the_software_key_rule(key: PrivateKey) -> None:
    strict = EnvelopeVerifier(
        key,
        region="eu-test",
        known_policy_hashes=[POLICY.content_hash],
        report_rules=ReportRules([POLICY]),
        software_tiers=["performance"],
    )
    env = _envelope(Device(), [_report()])  # inference.errors: health
    assert _reason(_verify(strict, key, env)) is RejectReason.SOFTWARE_KEY_REFUSED


def test_two_reports_of_one_task_in_one_envelope_are_a_schema_error(
    verifier: EnvelopeVerifier, key: PrivateKey
) -> None:
    env = _envelope(Device(), [_report(), _report()])
    assert _reason(_verify(verifier, key, env)) is RejectReason.SCHEMA_INVALID


def test_report_model_round_trips_bytes_as_base64() -> None:
    data = _report()
    report = PrioReport.model_validate(data)
    assert len(report.report_id) == 16
    assert PrioReport.model_validate_json(report.model_dump_json()) == report


def test_a_window_at_the_edge_of_the_calendar_is_refused_not_a_crash(
    key: PrivateKey,
) -> None:
    # A seven-hour policy window: the aligned batch of year 1 starts before year 1.
    odd = POLICY.model_copy(update={"window_seconds": 7 * 3600})
    verifier = EnvelopeVerifier(
        key,
        region="eu-test",
        known_policy_hashes=[odd.content_hash],
        report_rules=ReportRules([odd]),
    )
    start = datetime(1, 1, 1, tzinfo=UTC)
    env = _envelope(
        Device(),
        [_report()],
        policy_hash=odd.content_hash,
        window_start=start.isoformat(),
        window_end=(start + timedelta(hours=1)).isoformat(),
        sent_at=(start + timedelta(hours=1)).isoformat(),
    )
    verdict = _verify(verifier, key, env)
    assert _reason(verdict) is RejectReason.WINDOW_MISALIGNED


@pytest.mark.parametrize(
    ("field", "value"), [("sequence", 2**63), ("suppressed", {"inference.errors": 2**31})]
)
def test_integers_the_warehouse_cannot_store_are_a_schema_error(
    verifier: EnvelopeVerifier, key: PrivateKey, field: str, value: object
) -> None:
    env = _envelope(Device(), [_report()], **{field: value})
    assert _reason(_verify(verifier, key, env)) is RejectReason.SCHEMA_INVALID


def test_a_send_time_in_the_first_minutes_of_year_one_is_refused_not_a_crash(
    verifier: EnvelopeVerifier, key: PrivateKey
) -> None:
    start = datetime(1, 1, 1, tzinfo=UTC)
    env = _envelope(
        Device(),
        [],
        window_start=start.isoformat(),
        window_end=(start + timedelta(minutes=1)).isoformat(),
        sent_at=(start + timedelta(minutes=2)).isoformat(),
    )
    assert _reason(_verify(verifier, key, env)) is RejectReason.CLOCK_SKEW


@pytest.mark.parametrize(
    ("changes", "detail"),
    [
        ({}, "under the aggregate model"),  # inference.requests: shared, never local
        ({"signal": "made.up"}, "not declared"),
        (
            {"signal": "prompt.personal_data", "tier": "performance"},
            "is tier content",
        ),
    ],
)
def test_local_releases_are_checked_against_a_served_policy(
    verifier: EnvelopeVerifier, key: PrivateKey, changes: dict[str, str], detail: str
) -> None:
    release = counter_aggregate() | changes
    env = _envelope(Device(), [], aggregates=[release])
    verdict = _verify(verifier, key, env)
    assert _reason(verdict) is RejectReason.SIGNAL_INVALID
    assert detail in verdict.detail  # type: ignore[union-attr]


PILOT = load_policy(PILOT_POLICY_PATH)  # the same signals under the local model


@pytest.fixture
def pilot_verifier(key: PrivateKey) -> EnvelopeVerifier:
    return EnvelopeVerifier(
        key,
        region="eu-test",
        known_policy_hashes=[PILOT.content_hash],
        report_rules=ReportRules([PILOT]),
    )


def _local(release: dict[str, object]) -> dict[str, object]:
    env = Device().envelope(aggregates=[release])
    env["policy_hash"] = PILOT.content_hash
    return env


def test_a_release_as_the_client_makes_it_is_accepted(
    pilot_verifier: EnvelopeVerifier, key: PrivateKey
) -> None:
    verdict = _verify(pilot_verifier, key, _local(counter_aggregate(-120.0)))
    assert isinstance(verdict, Accepted), verdict


@pytest.mark.parametrize(
    ("change", "detail"),
    [
        (lambda a: a["noise"].update(scale=0.0), "is not the policy's"),
        (lambda a: a["noise"].update(epsilon=9.0), "is not the policy's"),
        (lambda a: a["noise"].update(upper=1e9), "is not the policy's"),
        (lambda a: a["noise"].update(mechanism="laplace"), "mechanism laplace"),
        (lambda a: a.update(value=1e12), "is not one noise makes"),
        (lambda a: a["attributes"].update(model="gpt-9"), "outside its declared domain"),
        (lambda a: a["attributes"].pop("model"), "the policy declares"),
        (lambda a: a["attributes"].update(user="ann"), "the policy declares"),
        (lambda a: a.update(value=3.5), "not a whole number"),
        (lambda a: a.update(unit="ms"), "unit 'ms'"),
    ],
)
def test_a_release_the_policy_would_not_make_is_refused(
    pilot_verifier: EnvelopeVerifier,
    key: PrivateKey,
    change: Callable[[dict[str, Any]], object],
    detail: str,
) -> None:
    release = counter_aggregate()
    change(release)
    verdict = _verify(pilot_verifier, key, _local(release))
    assert _reason(verdict) is RejectReason.SIGNAL_INVALID
    assert detail in verdict.detail  # type: ignore[union-attr]


def _histogram_release() -> dict[str, Any]:
    from client._aggregation import HistogramSnapshot
    from client._domain import CellDomain
    from client._release import release_histogram

    name = "gen_ai.client.operation.duration"
    spec = PILOT.signals[name]
    domain = CellDomain(spec.attributes)
    empty = [HistogramSnapshot([0] * (len(spec.buckets) + 1), 0.0)] * domain.size  # type: ignore[union-attr]
    release = release_histogram(name, spec, domain, empty)  # type: ignore[arg-type]
    out: dict[str, Any] = release.aggregates[0].model_dump(mode="json")
    return out


def test_a_histogram_release_is_checked_too(
    pilot_verifier: EnvelopeVerifier, key: PrivateKey
) -> None:
    good = _histogram_release()
    assert isinstance(_verify(pilot_verifier, key, _local(good)), Accepted)
    bad = _histogram_release()
    bad["sum_noise"]["scale"] = 1e-9
    verdict = _verify(pilot_verifier, key, _local(bad))
    assert _reason(verdict) is RejectReason.SIGNAL_INVALID
    assert "sum: noise" in verdict.detail  # type: ignore[union-attr]


def test_a_cell_released_twice_in_one_envelope_is_refused(
    pilot_verifier: EnvelopeVerifier, key: PrivateKey
) -> None:
    """One device must not count as many: each cell (and total) once per envelope, or
    the fleet figures take its contribution many times over for a single charge."""
    once = _local(counter_aggregate(511.0))
    assert isinstance(_verify(pilot_verifier, key, once), Accepted)
    twice = _local(counter_aggregate(511.0))
    twice["aggregates"] = [counter_aggregate(511.0) for _ in range(50)]
    verdict = _verify(pilot_verifier, key, twice)
    assert _reason(verdict) is RejectReason.SIGNAL_INVALID
    assert "released twice in one envelope" in verdict.detail  # type: ignore[union-attr]
    assert "route=" in verdict.detail  # type: ignore[union-attr]


def test_a_total_released_twice_in_one_envelope_is_refused(key: PrivateKey, tmp_path: Path) -> None:
    from client._domain import CellDomain
    from client._release import release_counter
    from policies import CounterSignal

    # The pilot policy, with a count total released next to inference.requests' cells.
    data = yaml.safe_load(PILOT_POLICY_PATH.read_text(encoding="utf-8"))
    data["signals"]["inference.requests"]["total_share"] = 0.5
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    policy = load_policy(path)
    verifier = EnvelopeVerifier(
        key,
        region="eu-test",
        known_policy_hashes=[policy.content_hash],
        report_rules=ReportRules([policy]),
    )
    spec = policy.signals["inference.requests"]
    assert isinstance(spec, CounterSignal)
    domain = CellDomain(spec.attributes)
    release = release_counter("inference.requests", spec, domain, [0] * domain.size)
    aggregates = [a.model_dump(mode="json") for a in release.aggregates]
    (total,) = [a for a in aggregates if a["kind"] == "total"]

    def envelope(releases: list[dict[str, Any]]) -> dict[str, Any]:
        env = Device().envelope(aggregates=releases)
        env["policy_hash"] = policy.content_hash
        return env

    assert isinstance(_verify(verifier, key, envelope(aggregates)), Accepted)
    verdict = _verify(verifier, key, envelope([*aggregates, total]))
    assert _reason(verdict) is RejectReason.SIGNAL_INVALID
    assert "the same total (count) is released twice" in verdict.detail  # type: ignore[union-attr]


def test_suppressed_may_name_only_declared_signals(
    pilot_verifier: EnvelopeVerifier, key: PrivateKey
) -> None:
    env = _local(counter_aggregate())
    env["suppressed"] = {"inference.requests": 1}
    assert isinstance(_verify(pilot_verifier, key, env), Accepted)
    env["suppressed"] = {"made.up.signal": 1}
    verdict = _verify(pilot_verifier, key, env)
    assert _reason(verdict) is RejectReason.SIGNAL_INVALID
    assert "'made.up.signal'" in verdict.detail  # type: ignore[union-attr]
