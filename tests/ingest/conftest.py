"""Fixtures: an ingest for region eu-test with a known key and an in-memory bus."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from nacl.public import PrivateKey

from ingest import IngestSettings, InMemoryEnvelopeBus, create_app, write_private_key
from tests.ingest.kit import SERVED_POLICIES, Device, asgi_client

REGION = "eu-test"


@pytest.fixture
def ingest_key(tmp_path: Path) -> PrivateKey:
    return write_private_key(tmp_path / "ingest.key")


@pytest.fixture
def settings(tmp_path: Path, ingest_key: PrivateKey) -> IngestSettings:
    return IngestSettings(
        policy_paths=SERVED_POLICIES,
        region=REGION,
        private_key_path=tmp_path / "ingest.key",
        state_dir=tmp_path / "state",
        max_batch=8,
        max_body_bytes=256 * 1024,
        max_sealed_bytes=16 * 1024,
    )


@pytest.fixture
def bus() -> InMemoryEnvelopeBus:
    return InMemoryEnvelopeBus()


@pytest.fixture
def app(settings: IngestSettings, bus: InMemoryEnvelopeBus) -> FastAPI:
    return create_app(settings, bus=bus)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(app) as c:
        yield c


@pytest.fixture
def device() -> Device:
    return Device(REGION)
