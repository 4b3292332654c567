"""The client on a real swtpm against the real ingest over HTTP (uvicorn on loopback):
it enrolls and attests by itself, sends TPM-signed envelopes, and keeps working with
software assurance when the TPM dies mid-run, dropping (and counting) the tier that
policy reserves for TPM keys."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI

from auditlog import AuditLog
from client import DeviceAttestor, FallbackKeyStore, SoftwareKeyStore, Telemetry, TelemetryConfig
from client._tpm_keystore import TpmKeyStore
from ingest import (
    IngestSettings,
    InMemoryEnvelopeBus,
    create_app,
    read_private_key,
    write_private_key,
)
from schemas import AppInfo, IngestedDeletionRequest, Tier
from tests.harness.swtpm import SwtpmInstance
from tests.integration.tpm._ingest_kit import write_policy

pytestmark = pytest.mark.integration


def _recent_midnight() -> datetime:
    now = datetime.now(UTC)
    return datetime(now.year, now.month, now.day, tzinfo=UTC) - timedelta(days=3)


T0 = _recent_midnight()
"""The client's clock starts three days back: the ingest runs on the real clock, and
refuses windows ahead of it or past their tiers' retention (content: 7 days)."""


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def served(tmp_path: Path, swtpm: SwtpmInstance) -> Iterator[tuple[str, InMemoryEnvelopeBus]]:
    """The real ingest app served by uvicorn on a free loopback port."""
    write_private_key(tmp_path / "ingest.key")
    policy = write_policy(
        tmp_path / "attestation.yaml", roots=[swtpm.root_cert], intermediates=[swtpm.issuer_cert]
    )
    bus = InMemoryEnvelopeBus()
    app: FastAPI = create_app(
        IngestSettings(
            region="eu-test",
            private_key_path=tmp_path / "ingest.key",
            state_dir=tmp_path / "ingest-state",
            attestation_policy_path=policy,
        ),
        bus=bus,
    )
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        thread.join(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", bus
    finally:
        server.should_exit = True
        thread.join()


def _attested_client(
    swtpm: SwtpmInstance, tmp_path: Path, url: str, *, tpm_only_tiers: Iterable[str] = ()
) -> tuple[FallbackKeyStore, DeviceAttestor, Clock, Telemetry]:
    """A manual-mode client whose keys live in `swtpm`, attesting itself to `url`."""
    keys = FallbackKeyStore(
        lambda: TpmKeyStore(swtpm.tcti, tmp_path / "tpm-keys"),
        SoftwareKeyStore(tmp_path / "software-key"),
        tpm_only_tiers=tpm_only_tiers,
    )
    assert keys.tpm is not None
    attestor = DeviceAttestor(keys.tpm, url)  # type: ignore[arg-type]
    keys.attach_attestor(attestor)
    clock = Clock()
    telemetry = Telemetry(
        TelemetryConfig(
            app=AppInfo(name="demo-app", version="1.0"),
            region="eu-test",
            ingest_public_key=bytes(read_private_key(tmp_path / "ingest.key").public_key),
            endpoint=url,
            state_dir=tmp_path / "client-state",
            key_store=keys,
            clock=clock,
            mode="manual",
            retry_backoff=0.0,
        )
    )
    return keys, attestor, clock, telemetry


def test_tpm_device_attests_itself_and_falls_back_when_the_tpm_dies(
    served: tuple[str, InMemoryEnvelopeBus], swtpm: SwtpmInstance, tmp_path: Path
) -> None:
    url, bus = served
    keys, attestor, clock, telemetry = _attested_client(
        swtpm, tmp_path, url, tpm_only_tiers={"performance", "content"}
    )
    try:
        telemetry.grant_consent(Tier.HEALTH)
        telemetry.grant_consent(Tier.PERFORMANCE)
        telemetry.record("inference.requests", 1, route="local", model="qwen2.5-7b@1.1")
        telemetry.record("inference.errors", 1, route="local")
        clock.now += timedelta(days=1)
        telemetry.collect()
        assert telemetry.flush()

        first = bus.published[-1]
        assert first.assurance == "tpm"
        assert first.envelope.device_id.startswith("tpm-")
        assert {r.tier for r in first.envelope.reports} >= {Tier.HEALTH, Tier.PERFORMANCE}
        assert attestor.expires_at is not None

        swtpm.stop()  # the TPM dies mid-run
        telemetry.record("inference.requests", 1, route="local", model="qwen2.5-7b@1.1")
        telemetry.record("inference.errors", 2, route="local")
        clock.now += timedelta(days=1)
        telemetry.collect()
        assert telemetry.flush()

        second = bus.published[-1]
        assert second.assurance == "software"
        assert {r.tier for r in second.envelope.reports} == {Tier.HEALTH}
        assert telemetry.dropped().get("tier_requires_tpm", 0) > 0
        assert not any(k.startswith("rejected:") for k in telemetry.dropped())
        assert any(k.startswith("tpm_failed") for k in keys.failures)
    finally:
        telemetry.shutdown(carry_open_window=False, timeout=1.0)
        attestor.close()
    log = AuditLog(tmp_path / "ingest-state" / "audit.sqlite3")
    try:
        assert log.verify_chain().ok
        assert log.entries(action="attest", decision="accepted")
    finally:
        log.close()


def test_a_tpm_device_revoking_consent_gets_its_deletion_recorded(
    served: tuple[str, InMemoryEnvelopeBus], swtpm: SwtpmInstance, tmp_path: Path
) -> None:
    url, bus = served
    _keys, attestor, clock, telemetry = _attested_client(swtpm, tmp_path, url)
    try:
        telemetry.grant_consent(Tier.PERFORMANCE)
        telemetry.record("inference.requests", 1, route="local", model="qwen2.5-7b@1.1")
        clock.now += timedelta(days=1)
        telemetry.collect()
        assert telemetry.flush()
        telemetry.revoke_consent(Tier.PERFORMANCE)
        assert telemetry.flush()
    finally:
        telemetry.shutdown(carry_open_window=False, timeout=1.0)
        attestor.close()

    deletions = [p for p in bus.published if isinstance(p, IngestedDeletionRequest)]
    assert [(d.deletion.device_id, d.deletion.tier) for d in deletions] == [
        (telemetry.device_id, Tier.PERFORMANCE)
    ]
    assert telemetry.device_id.startswith("tpm-")
    assert not any(k.startswith("rejected:") for k in telemetry.dropped())
    log = AuditLog(tmp_path / "ingest-state" / "audit.sqlite3")
    try:
        (entry,) = log.entries(action="deletion")
        assert (entry.decision, entry.device_id) == ("accepted", telemetry.device_id)
        assert log.verify_chain().ok
    finally:
        log.close()


def test_absent_tpm_means_software_keys_without_raising(tmp_path: Path) -> None:
    keys = FallbackKeyStore(
        lambda: TpmKeyStore("swtpm:host=127.0.0.1,port=1", tmp_path / "tpm-keys"),
        SoftwareKeyStore(tmp_path / "software-key"),
    )

    assert keys.tpm is None
    assert keys.assurance == "software"
    assert keys.device_id.startswith("dev-")
    assert any(k.startswith("tpm_unavailable") for k in keys.failures)
