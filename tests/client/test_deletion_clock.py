"""A revocation is never lost to a clock: a device whose clock runs fast sends a
deletion request the ingest refuses as `clock_skew`; the client keeps it and sends it
again, and the ingest records it once its own time has caught up."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from client import HttpTransport, Telemetry, TelemetryConfig
from ingest import (
    IngestSettings,
    InMemoryEnvelopeBus,
    create_app,
    write_private_key,
)
from policies import DEFAULT_POLICY_PATH, PILOT_POLICY_PATH, load_policy
from schemas import AppInfo, IngestedDeletionRequest, Tier
from tests.client.conftest import FakeClock
from tests.ingest.sync_client import SyncClient, sync_client

PILOT = load_policy(PILOT_POLICY_PATH)  # local model only: no helper needed


class _InProcess(httpx.BaseTransport):
    """httpx's synchronous transport into the running app (the client's HttpTransport
    speaks to the real ingest, in this process)."""

    def __init__(self, app: SyncClient) -> None:
        self._app = app

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        answer = self._app.request(
            request.method, request.url.path, content=request.read(), headers=request.headers
        )
        return httpx.Response(answer.status_code, headers=answer.headers, content=answer.content)


def test_a_revocation_from_a_fast_clock_is_kept_until_the_ingest_accepts_it(
    tmp_path: Path,
) -> None:
    ingest_now = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)

    def ingest_clock() -> datetime:
        return ingest_now

    write_private_key(tmp_path / "ingest.key")
    settings = IngestSettings(
        region="eu-west",
        policy_paths=(DEFAULT_POLICY_PATH, PILOT_POLICY_PATH),
        private_key_path=tmp_path / "ingest.key",
        state_dir=tmp_path / "ingest",
    )
    bus = InMemoryEnvelopeBus()
    app = create_app(settings, bus=bus, clock=ingest_clock)
    device_clock = FakeClock(ingest_now + timedelta(hours=1))  # an hour fast
    with sync_client(app) as running:
        http = httpx.Client(transport=_InProcess(running))
        qw = Telemetry(
            TelemetryConfig(
                app=AppInfo(name="demo-app", version="1.0"),
                region="eu-west",
                policy=PILOT,
                ingest_public_key=bytes(running.ingest_key),
                transport=HttpTransport("http://ingest.test", client=http),
                state_dir=tmp_path / "device",
                clock=device_clock,
                mode="manual",
                retry_backoff=0.0,
            )
        )
        qw.grant_consent(Tier.PERFORMANCE)
        qw.revoke_consent(Tier.PERFORMANCE)

        assert not qw.flush()  # refused as clock_skew: kept, not dropped
        deletions = [i for i in bus.published if isinstance(i, IngestedDeletionRequest)]
        assert deletions == []
        assert "rejected:deletion_request" not in qw.dropped()

        ingest_now += timedelta(hours=1)  # the ingest's time catches up
        qw.flush()
        deletions = [i for i in bus.published if isinstance(i, IngestedDeletionRequest)]
        assert [d.deletion.tier for d in deletions] == [Tier.PERFORMANCE]
        assert "rejected:deletion_request" not in qw.dropped()
        qw.shutdown(carry_open_window=False)
