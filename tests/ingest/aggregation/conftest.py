"""Fixtures: a warehouse, a helper app served in-process, a leader wired to both."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from nacl.public import PrivateKey

from ingest import AuditLog, DuckDBSink, write_private_key
from ingest.aggregation import (
    AggregationService,
    HelperClient,
    HelperSettings,
    TaskCatalog,
    serve_helper,
)
from policies import Policy
from tests.ingest.aggregation.kit import VERIFY_KEY, Fleet, ZeroNoise, small_policy

TOKEN = "leader-token-for-tests"


@pytest.fixture
def helper_key(tmp_path: Path) -> PrivateKey:
    return write_private_key(tmp_path / "helper.key")


@pytest.fixture
def policy(helper_key: PrivateKey) -> Policy:
    return small_policy(helper_key)


@pytest.fixture
def helper_settings(tmp_path: Path, helper_key: PrivateKey) -> HelperSettings:
    return HelperSettings(
        private_key_path=tmp_path / "helper.key",
        state_dir=tmp_path / "helper",
        verify_key=VERIFY_KEY.hex(),
        leader_token=TOKEN,
        max_job_reports=64,
    )


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[DuckDBSink]:
    s = DuckDBSink(tmp_path / "warehouse.duckdb")
    yield s
    s.close()


@pytest.fixture
def fleet(policy: Policy, helper_key: PrivateKey, sink: DuckDBSink) -> Fleet:
    return Fleet(policy, helper_key, sink)


@pytest.fixture
def helper_url(helper_settings: HelperSettings, policy: Policy) -> Iterator[str]:
    """A noise-free helper on a loopback port (real HTTP, uvicorn in a thread)."""
    with serve_helper(helper_settings, policies=[policy], noise=ZeroNoise()) as url:
        yield url


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30.0) as client:
        yield client


@pytest.fixture
def audit(tmp_path: Path) -> Iterator[AuditLog]:
    log = AuditLog(tmp_path / "ingest" / "audit.sqlite3")
    yield log
    log.close()


@pytest.fixture
def leader(
    sink: DuckDBSink, helper_url: str, http: httpx.Client, policy: Policy, audit: AuditLog
) -> AggregationService:
    return AggregationService(
        sink,
        HelperClient(helper_url, token=TOKEN, client=http),
        TaskCatalog.from_policies([policy]),
        VERIFY_KEY,
        audit=audit,
        noise=ZeroNoise(),
        max_job_reports=16,
    )
