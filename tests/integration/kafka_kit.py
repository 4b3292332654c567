"""Reading a whole topic in tests: to its end offsets, not until a poll comes back empty
(a slow fetch on a loaded machine is not the end of the topic)."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import AIOKafkaConsumer

__all__ = ["read_topic"]

_DEADLINE_SECONDS = 120.0


async def read_topic(bootstrap: str, topic: str) -> list[Any]:
    """Every record of `topic`, read without a group up to its end offsets."""
    reader = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await reader.start()
    records: list[Any] = []
    ends: dict[Any, int] | None = None
    try:
        async with asyncio.timeout(_DEADLINE_SECONDS):
            while True:
                batch = await reader.getmany(timeout_ms=1000, max_records=1000)
                records.extend(r for rs in batch.values() for r in rs)
                assigned = list(reader.assignment())
                if not assigned:
                    continue
                if ends is None:
                    ends = await reader.end_offsets(assigned)
                if all([await reader.position(tp) >= ends[tp] for tp in assigned]):
                    return records
    finally:
        await reader.stop()
