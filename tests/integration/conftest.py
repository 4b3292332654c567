"""Fixtures for tests on real parts: a Kafka broker shared by the whole session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.kafka import KafkaBroker

_HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test under tests/integration, so `-m "not integration"` skips them."""
    for item in items:
        if _HERE in item.path.parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[KafkaBroker]:
    """A started single-node Kafka broker (jars fetched on first use), stopped at the end."""
    with KafkaBroker() as broker:
        yield broker
