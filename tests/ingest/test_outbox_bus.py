"""The embedded default bus: durable in the outbox at the answer, in the warehouse soon
after, exactly once across crashes, and bounded while the warehouse is down."""

from __future__ import annotations

import asyncio
import errno
import os
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path

import duckdb
import pytest

from ingest import BusUnavailable, DuckDBSink, Outbox, OutboxEnvelopeBus, _outbox, _outbox_bus
from ingest._outbox_bus import OUTBOX_TOPIC
from ingest._sink import SinkItem
from schemas import IngestedEnvelope
from tests.ingest.kit import Device, ingested
from warehouse import PartitionOffset, WriteResult


class _FailingSink(DuckDBSink):
    """A warehouse whose first `failures` writes fail as a full disk would."""

    def __init__(self, path: Path, failures: int) -> None:
        super().__init__(path)
        self.failures = failures

    def write(
        self, items: Sequence[SinkItem], offsets: Sequence[PartitionOffset] = ()
    ) -> WriteResult:
        if self.failures > 0:
            self.failures -= 1
            raise duckdb.IOException("No space left on device")
        return super().write(items, offsets)


async def _until(condition: Callable[[], bool]) -> None:
    """Poll `condition` (a warehouse count, a file's: nothing signals those) for 10 s."""
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("timed out")


async def test_an_answer_is_durable_in_the_outbox_and_stop_fills_the_warehouse(
    tmp_path: Path,
) -> None:
    sink = DuckDBSink(tmp_path / "wh.duckdb")
    bus = OutboxEnvelopeBus(sink, Outbox(tmp_path / "outbox"), drain_interval=60.0)
    await bus.start()
    items = [ingested(Device()) for _ in range(5)]
    await bus.publish(items[:2])
    await bus.publish(items[2:])
    # Published means on disk: a second reader of the file sees all five.
    assert Outbox.pending(tmp_path / "outbox") == 5
    assert sink.envelope_count() == 0  # the drain waits for its interval
    await bus.stop()
    check = DuckDBSink(tmp_path / "wh.duckdb")
    try:
        assert check.envelope_count() == 5
    finally:
        check.close()
    assert Outbox.pending(tmp_path / "outbox") == 0


async def test_the_warehouse_follows_within_the_drain_interval(tmp_path: Path) -> None:
    sink = DuckDBSink(tmp_path / "wh.duckdb")
    bus = OutboxEnvelopeBus(sink, Outbox(tmp_path / "outbox"), drain_interval=0.05)
    await bus.start()
    try:
        await bus.publish([ingested(Device()) for _ in range(3)])
        await _until(lambda: sink.envelope_count() == 3)
        await _until(lambda: Outbox.pending(tmp_path / "outbox") == 0)
        assert (await bus.check()).ok
    finally:
        await bus.stop()


async def test_what_a_crash_left_in_the_outbox_is_stored_at_start_once(tmp_path: Path) -> None:
    """Items a crashed ingest had answered for (still in the outbox, some of them already
    in the warehouse: the crash came between the commit and the removal) are stored at
    the next start, none twice; one that does not decode becomes a dead letter."""
    stored, pending = ingested(Device()), [ingested(Device()) for _ in range(3)]
    sink = DuckDBSink(tmp_path / "wh.duckdb")
    sink.write([stored])
    left = Outbox(tmp_path / "outbox")
    encoded = [i.model_dump_json().encode() for i in (stored, *pending)]
    seqs = left.append([*encoded, b"not json"])
    left.close()
    bus = OutboxEnvelopeBus(sink, Outbox(tmp_path / "outbox"), drain_interval=0.05)
    await bus.start()
    await bus.stop()
    check = DuckDBSink(tmp_path / "wh.duckdb")
    try:
        assert check.envelope_count() == 4
        letters = check.connection.execute(
            "SELECT topic, kafka_offset, message_value FROM dead_letters"
        ).fetchall()
    finally:
        check.close()
    assert letters == [(OUTBOX_TOPIC, seqs[-1], b"not json")]
    assert bus.dead_letters == 1
    assert Outbox.pending(tmp_path / "outbox") == 0


async def test_a_failing_warehouse_keeps_the_items_names_itself_and_recovers(
    tmp_path: Path,
) -> None:
    sink = _FailingSink(tmp_path / "wh.duckdb", failures=2)
    bus = OutboxEnvelopeBus(sink, Outbox(tmp_path / "outbox"), drain_interval=0.01)
    await bus.start()
    try:
        await bus.publish([ingested(Device()) for _ in range(2)])
        await _until(lambda: bus._failing is not None)
        down = await bus.check()
        assert not down.ok
        assert "No space left on device" in down.detail
        assert "2 item(s) wait in the outbox" in down.detail
        await _until(lambda: sink.envelope_count() == 2)  # the retry after the backoff
        await _until(lambda: bus._failing is None)
    finally:
        await bus.stop()
    assert Outbox.pending(tmp_path / "outbox") == 0


async def test_a_full_backlog_answers_bus_unavailable_and_loses_nothing(tmp_path: Path) -> None:
    sink = _FailingSink(tmp_path / "wh.duckdb", failures=10**6)
    bus = OutboxEnvelopeBus(sink, Outbox(tmp_path / "outbox"), drain_interval=0.01, max_backlog=3)
    await bus.start()
    await bus.publish([ingested(Device()) for _ in range(3)])
    with pytest.raises(BusUnavailable, match="3 items behind"):
        await bus.publish([ingested(Device())])
    await bus.stop()  # the warehouse still fails: the three stay for the next start
    assert Outbox.pending(tmp_path / "outbox") == 3
    sink.failures = 0
    healthy = DuckDBSink(tmp_path / "wh.duckdb")
    again = OutboxEnvelopeBus(healthy, Outbox(tmp_path / "outbox"))
    await again.start()
    await again.stop()
    check = DuckDBSink(tmp_path / "wh.duckdb")
    try:
        assert check.envelope_count() == 3
    finally:
        check.close()


async def test_a_failed_outbox_write_is_reported_as_itself_and_stores_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk refuses the append's sync (as a full one does): the publisher hears why,
    nothing of it stays (on disk either), and the next append reaches the warehouse."""
    outbox = Outbox(tmp_path / "outbox")
    bus = OutboxEnvelopeBus(DuckDBSink(tmp_path / "wh.duckdb"), outbox, drain_interval=60.0)
    await bus.start()

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(_outbox.os, "fdatasync", full)
    with pytest.raises(BusUnavailable) as refused:
        await bus.publish([ingested(Device())])
    assert str(refused.value) == "the outbox did not commit: [Errno 28] No space left on device"
    assert outbox.count() == 0
    monkeypatch.undo()
    later = ingested(Device())
    await bus.publish([later])
    assert outbox.count() == 1
    assert Outbox.pending(tmp_path / "outbox") == 1  # what a restart would find
    await bus.stop()
    check = DuckDBSink(tmp_path / "wh.duckdb")
    try:
        stored = check.connection.execute("SELECT device_id FROM envelopes").fetchall()
    finally:
        check.close()
    assert stored == [(later.envelope.device_id,)]


class _PoisonSink(DuckDBSink):
    """A warehouse that fails any write holding one particular device's envelope with an
    error that is not a row's (as a bug brought out by a strange valid envelope would)."""

    def __init__(self, path: Path, poison: str) -> None:
        super().__init__(path)
        self.poison = poison

    def write(
        self, items: Sequence[SinkItem], offsets: Sequence[PartitionOffset] = ()
    ) -> WriteResult:
        if any(
            isinstance(i, IngestedEnvelope) and i.envelope.device_id == self.poison for i in items
        ):
            raise TypeError("unsupported operand type(s)")
        return super().write(items, offsets)


async def test_an_item_that_fails_every_write_is_dead_lettered_and_holds_nothing_back(
    tmp_path: Path,
) -> None:
    poison = Device()
    sink = _PoisonSink(tmp_path / "wh.duckdb", poison.device_id)
    bus = OutboxEnvelopeBus(sink, Outbox(tmp_path / "outbox"), drain_interval=0.01)
    await bus.start()
    try:
        good = [ingested(Device()) for _ in range(5)]
        await bus.publish([*good[:2], ingested(poison), *good[2:]])
        await _until(lambda: sink.envelope_count() == 5)
        await _until(lambda: bus.dead_letters == 1)
        await _until(lambda: bus._failing is None)
        later = ingested(Device())
        await bus.publish([later])  # and the drain goes on
        await _until(lambda: sink.envelope_count() == 6)
    finally:
        await bus.stop()
    check = DuckDBSink(tmp_path / "wh.duckdb")
    try:
        letters = check.connection.execute(
            "SELECT device_id, stage, error_class FROM dead_letters"
        ).fetchall()
    finally:
        check.close()
    assert letters == [(poison.device_id, "store", "TypeError")]
    assert Outbox.pending(tmp_path / "outbox") == 0


async def test_a_failing_warehouse_dead_letters_nothing(tmp_path: Path) -> None:
    """When no write stores anything the warehouse is failing, not an item: the search
    for a poison item keeps every item in the outbox."""
    sink = _FailingSink(tmp_path / "wh.duckdb", failures=10**6)
    bus = OutboxEnvelopeBus(sink, Outbox(tmp_path / "outbox"), drain_interval=0.01)
    await bus.start()
    await bus.publish([ingested(Device()) for _ in range(4)])
    # Three failed drains, then a search: 4 items written in halves, 6 more failures.
    await _until(lambda: sink.failures <= 10**6 - 9)
    await bus.stop()
    assert bus.dead_letters == 0
    assert Outbox.pending(tmp_path / "outbox") == 4


async def test_the_collectors_pass_comes_after_the_stored_items_are_released(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The drain schedules the collector's pass for when the queue is shortest: by
    then nothing may still hold the items it stored (a pass costs what is alive)."""
    items = [ingested(Device()) for _ in range(3)]
    alive = [weakref.ref(i) for i in items]
    seen: list[int] = []
    monkeypatch.setattr(
        _outbox_bus, "collect_garbage", lambda: seen.append(sum(r() is not None for r in alive))
    )
    bus = OutboxEnvelopeBus(
        DuckDBSink(tmp_path / "wh.duckdb"), Outbox(tmp_path / "outbox"), drain_interval=0.01
    )
    await bus.start()
    try:
        await bus.publish(items)
        del items
        await _until(lambda: bool(seen))
    finally:
        await bus.stop()
    assert seen[0] == 0
