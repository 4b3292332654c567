"""The embedded outbox's files: durable appends, numbers that never go back, an
interrupted append cut off at the next open, one process at a time, and the first
form's SQLite outbox moved in."""

from __future__ import annotations

import errno
import os
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from ingest import ConfigurationError, Outbox, _outbox


def _items(n: int, size: int = 100) -> list[bytes]:
    return [bytes([i % 256]) * size for i in range(n)]


def _segments(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("*.log"))


def test_items_come_back_in_order_and_go_once_removed(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox")
    first, second = box.append(_items(3)), box.append([b"x", b"y"])
    assert (first, second) == ([1, 2, 3], [4, 5])
    assert box.count() == 5
    assert box.read(2) == [(1, _items(3)[0]), (2, _items(3)[1])]
    assert box.read(10, after=3) == [(4, b"x"), (5, b"y")]
    box.remove_through(2)
    assert (box.count(), box.numbers()) == (3, [3, 4, 5])
    assert box.read(10) == [(3, _items(3)[2]), (4, b"x"), (5, b"y")]
    assert Outbox.pending(tmp_path / "outbox") == 3
    box.remove_through(5)
    assert (box.count(), box.read(10), _segments(tmp_path / "outbox")) == (0, [], [])
    box.close()
    box.close()  # twice is fine


def test_numbers_never_go_back_across_restarts(tmp_path: Path) -> None:
    """A dead letter from the outbox is named by its number: a number may not return,
    even once every item is gone and the process restarted."""
    box = Outbox(tmp_path / "outbox")
    box.append(_items(4))
    box.remove_through(4)
    box.close()
    again = Outbox(tmp_path / "outbox")
    assert again.append([b"z"]) == [5]
    again.remove_through(99)  # never past what was appended
    assert again.append([b"w"]) == [6]
    assert again.count() == 1
    again.close()


def test_what_was_appended_survives_a_restart_and_the_removed_does_not(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox")
    box.append(_items(3))
    box.append(_items(2, size=5000))
    box.remove_through(1)
    box.append([b"last"])
    box.close()  # as a crash would leave it: nothing else is written at close
    again = Outbox(tmp_path / "outbox")
    assert again.numbers() == [2, 3, 4, 5, 6]
    assert [item for _, item in again.read(10)] == [
        *_items(3)[1:],
        *_items(2, size=5000),
        b"last",
    ]
    again.close()


@pytest.mark.parametrize("damage", ["cut", "flipped", "garbage"])
def test_an_interrupted_append_is_cut_off_at_open_and_numbering_goes_on(
    tmp_path: Path, damage: str
) -> None:
    box = Outbox(tmp_path / "outbox")
    box.append(_items(2))
    box.append([b"the torn one"])
    box.close()
    (segment,) = (tmp_path / "outbox").glob("*.log")
    data = segment.read_bytes()
    if damage == "cut":  # the last frame half written
        segment.write_bytes(data[:-5])
    elif damage == "flipped":  # its bytes wrong (the CRC fails)
        segment.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    else:  # bytes after it that are no frame
        segment.write_bytes(data + b"\x07" * 30)
    kept = 2 if damage != "garbage" else 3
    assert Outbox.pending(tmp_path / "outbox") == kept
    again = Outbox(tmp_path / "outbox")
    assert again.numbers() == list(range(1, kept + 1))
    assert again.append([b"next"]) == [kept + 1]
    again.close()
    third = Outbox(tmp_path / "outbox")
    assert [item for _, item in third.read(10)][-1] == b"next"
    assert third.count() == kept + 1
    third.close()


def test_a_segment_with_nothing_intact_is_deleted(tmp_path: Path) -> None:
    directory = tmp_path / "outbox"
    directory.mkdir()
    (directory / f"{7:020d}.log").write_bytes(b"\x01\x02\x03")
    box = Outbox(directory)
    assert (box.count(), _segments(directory)) == (0, [])
    assert box.append([b"a"]) == [1]
    box.close()


@pytest.mark.parametrize("truncate_fails", [False, True], ids=["cut-back", "new-segment"])
def test_a_failed_write_leaves_nothing_behind_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, truncate_fails: bool
) -> None:
    """Nothing may ever be appended behind a torn frame: it would be cut off, with the
    acknowledged items after it, at the next open. The torn bytes are cut back; if that
    fails too, the next append starts a segment of its own."""
    box = Outbox(tmp_path / "outbox")
    box.append([b"before"])
    real_write = os.write

    def torn(fd: int, data: bytes | memoryview) -> int:
        real_write(fd, bytes(data[:8]))  # half a frame's head, then the disk is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def no_truncate(fd: int, size: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(_outbox.os, "write", torn)
    if truncate_fails:
        monkeypatch.setattr(_outbox.os, "ftruncate", no_truncate)
    with pytest.raises(OSError, match="No space left"):
        box.append([b"refused"])
    monkeypatch.undo()
    assert box.append([b"after"]) == [2]
    assert len(_segments(tmp_path / "outbox")) == (2 if truncate_fails else 1)
    box.close()
    again = Outbox(tmp_path / "outbox")
    assert again.read(10) == [(1, b"before"), (2, b"after")]
    again.close()


def test_a_long_backlog_is_split_into_segments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_outbox, "_SEGMENT_BYTES", 1000)
    box = Outbox(tmp_path / "outbox")
    for _ in range(5):
        box.append(_items(3, size=200))
    # 624 bytes per append: a segment takes appends until it holds 1000 bytes or more.
    assert _segments(tmp_path / "outbox") == [f"{n:020d}.log" for n in (1, 7, 13)]
    assert [seq for seq, _ in box.read(4, after=5)] == [6, 7, 8, 9]
    box.remove_through(7)
    assert _segments(tmp_path / "outbox") == [f"{n:020d}.log" for n in (7, 13)]
    assert box.numbers() == list(range(8, 16))
    box.close()
    again = Outbox(tmp_path / "outbox")
    assert again.numbers() == list(range(8, 16))
    again.close()


def test_one_process_at_a_time(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox")
    with pytest.raises(ConfigurationError, match="in use by another process"):
        Outbox(tmp_path / "outbox")
    box.close()
    Outbox(tmp_path / "outbox").close()


def test_an_unreadable_mark_is_a_configuration_error(tmp_path: Path) -> None:
    directory = tmp_path / "outbox"
    directory.mkdir()
    (directory / "removed").write_text("twelve")
    with pytest.raises(ConfigurationError, match="not an item number"):
        Outbox(directory)
    (directory / "removed").write_text("12\n")
    box = Outbox(directory)  # the failed open gave its lock back
    assert box.append([b"a"]) == [13]
    box.close()


def test_the_first_forms_sqlite_outbox_is_moved_in(tmp_path: Path) -> None:
    legacy = tmp_path / "outbox.sqlite3"
    with closing(sqlite3.connect(legacy)) as db:
        db.execute("CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, item BLOB)")
        db.executemany("INSERT INTO outbox VALUES (?, ?)", [(i, b"old %d" % i) for i in (1, 2, 3)])
        db.execute("DELETE FROM outbox WHERE seq = 1")  # the warehouse had it
        db.commit()
    box = Outbox.open_in(tmp_path)
    assert box.read(10) == [(2, b"old 2"), (3, b"old 3")]
    assert box.append([b"new"]) == [4]
    box.close()
    assert not legacy.exists()
    again = Outbox.open_in(tmp_path)
    assert again.numbers() == [2, 3, 4]
    again.close()


def test_an_empty_first_form_outbox_keeps_its_numbers_used(tmp_path: Path) -> None:
    legacy = tmp_path / "outbox.sqlite3"
    with closing(sqlite3.connect(legacy)) as db:
        db.execute("CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, item BLOB)")
        db.executemany("INSERT INTO outbox (item) VALUES (?)", [(b"a",), (b"b",)])
        db.execute("DELETE FROM outbox")
        db.commit()
    box = Outbox.open_in(tmp_path)
    assert box.append([b"new"]) == [3]
    box.close()
    assert not legacy.exists()
