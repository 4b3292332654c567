"""The embedded ingest's outbox: a durable queue between the answer and the warehouse.

With the embedded sink, what makes a 202 safe to give is that the envelopes are on
disk, not that DuckDB has them in its tables. A DuckDB transaction costs milliseconds
of CPU however few rows it holds, so committing one per group of requests made the
warehouse most of the ingest's CPU. The outbox is what Kafka is in the other mode:
`append` makes a group of serialized bus items durable (on disk when it returns, power
loss included), and `ingest._outbox_bus.OutboxEnvelopeBus` moves them into the
warehouse in large batches behind the answers, removing them once DuckDB committed.

A crash between the DuckDB commit and the removal replays those items, which the sink
skips by (device, envelope id) and deletion request id, so every item reaches the
warehouse exactly once. Items are kept in the order they were appended (a device's
deletion request stays behind its earlier envelopes), numbered by a sequence that never
goes back, across restarts too (a dead letter from the outbox is named by its number).

**On disk**: a directory (`state_dir/outbox/`) of append-only segment files, each named
by the number of its first item, holding frames of ``number (u64) | length (u32) |
CRC-32 (u32) | item``, little-endian; `append` writes a group's frames in one write
and `fdatasync`s them. A segment is only ever appended to, then deleted whole once the
warehouse holds all of it: `remove_through` records how far the warehouse has got
(`removed`, replaced atomically and fsync'd) and deletes the segments it covers, and
the next `append` starts a new segment, so one drain's removal frees one segment.
At open, each segment is read back frame by frame: a frame that is cut short or fails
its CRC is where an `append` was interrupted (a crash or a full disk before it
returned, so never acknowledged): it and what follows are cut off the file, and said so
in the log.

This replaced one SQLite row per item (the outbox's first form), which cost about 7
µs per item to insert and 6 to delete (a B-tree of 1.4 KiB rows, page by page), against
about 2 µs per item for a framed write and its fdatasync and nothing to delete (an
unlink per segment); at batch 10 that was about 4% of the ingest's CPU per envelope
(docs/ingest.md, "Throughput"). A queue library was not used: the maintained Python one
(persist-queue) offers SQLite tables, the form replaced here, or a pickle-based file
queue, and what this needs is bytes in, one framed write and one sync per group.

An outbox the first form left (`state_dir/outbox.sqlite3`) is moved into the new one
when it opens (`Outbox.open_in`), in order and numbered on from its first, before it is
deleted.

One directory for one ingest process, held by an exclusive lock (`.lock`): replicas
each have their own (docs/ingest.md, "Deployment: what replicas share"). Thread-safe.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import struct
import threading
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ingest._errors import ConfigurationError

__all__ = ["Outbox"]

log = logging.getLogger("quietwire.ingest.outbox")

_FRAME = struct.Struct("<QII")
"""A frame's head: the item's number, its length, the CRC-32 of number, length and item."""
_NUMBERED = struct.Struct("<QI")
_SEGMENT_BYTES = 16 << 20
"""An append past this size starts a new segment: what a long warehouse outage leaves is
read back a segment at a time, not as one file of every item."""
_MAX_ITEM = 1 << 30
"""No item is this long (the ingest's body limit is far below): a longer length is a
torn or corrupt frame, not one to allocate for."""
_SUFFIX = ".log"
_MARK = "removed"
_LOCK = ".lock"
_LEGACY_FILE = "outbox.sqlite3"


def _frame(seq: int, item: bytes) -> bytes:
    numbered = _NUMBERED.pack(seq, len(item))
    return _FRAME.pack(seq, len(item), zlib.crc32(item, zlib.crc32(numbered))) + item


@dataclass(slots=True)
class _Segment:
    """A segment file: items `first` .. `last` (contiguous), `size` bytes of frames."""

    path: Path
    first: int
    last: int
    size: int


def _frames(data: bytes) -> Iterator[tuple[int, int, int]]:
    """(number, item start, item end) of each whole, intact frame of `data`,
    from the start; stops at the first that is cut short, fails its CRC or does not
    follow the number before it."""
    at, previous = 0, None
    while at + _FRAME.size <= len(data):
        seq, length, crc = _FRAME.unpack_from(data, at)
        start, end = at + _FRAME.size, at + _FRAME.size + length
        if length > _MAX_ITEM or end > len(data):
            return
        if previous is not None and seq != previous + 1:
            return
        numbered = _NUMBERED.pack(seq, length)
        if zlib.crc32(memoryview(data)[start:end], zlib.crc32(numbered)) != crc:
            return
        yield seq, start, end
        at, previous = end, seq


def _read_mark(directory: Path) -> int:
    try:
        text = (directory / _MARK).read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return 0
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"outbox {directory}: cannot read {_MARK!r}: {exc}") from exc
    if not text.isdigit():
        raise ConfigurationError(
            f"outbox {directory}: {_MARK!r} holds {text[:40]!r}, not an item number"
        )
    return int(text)


def _segment_files(directory: Path) -> list[tuple[int, Path]]:
    found: list[tuple[int, Path]] = []
    for path in directory.iterdir():
        stem = path.name.removesuffix(_SUFFIX)
        if path.name.endswith(_SUFFIX) and stem.isdigit():
            found.append((int(stem), path))
    return sorted(found)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Outbox:
    """Serialized bus items, durable and in order, until the warehouse holds them."""

    DIR_NAME = "outbox"

    def __init__(self, path: Path | str) -> None:
        """Open (creating it if needed) the outbox directory at `path`, taking its lock.
        Raises `ConfigurationError` when it cannot be opened, or another process has it."""
        self.path = Path(path)
        self._lock = threading.Lock()
        self._segments: list[_Segment] = []
        self._active: int | None = None
        """The file descriptor `append` writes to (the last segment's), if open."""
        self._closed = False
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(self.path / _LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise ConfigurationError(f"outbox {self.path}: {exc}") from exc
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self._lock_fd)
            raise ConfigurationError(
                f"outbox {self.path} is in use by another process (each ingest process "
                "needs a state directory of its own)"
            ) from exc
        try:
            self._removed = _read_mark(self.path)
            self._recover()
        except OSError as exc:
            os.close(self._lock_fd)
            raise ConfigurationError(f"outbox {self.path}: {exc}") from exc
        except BaseException:
            os.close(self._lock_fd)
            raise
        last = self._segments[-1].last if self._segments else 0
        self._next = max(self._removed, last) + 1

    @classmethod
    def open_in(cls, state_dir: Path) -> Outbox:
        """The outbox of the ingest whose state directory is `state_dir`, with what an
        outbox of the first form (`outbox.sqlite3`) still held moved into it first."""
        outbox = cls(state_dir / cls.DIR_NAME)
        legacy = state_dir / _LEGACY_FILE
        if legacy.exists():
            try:
                outbox._adopt(legacy)
            except BaseException:
                outbox.close()
                raise
        return outbox

    def _adopt(self, legacy: Path) -> None:
        """Append what the SQLite outbox at `legacy` holds, under its own numbers (they
        continue this outbox's), then delete it. A crash in between appends them again at
        the next start: the sink skips what it has already stored."""
        try:
            with contextlib.closing(sqlite3.connect(legacy)) as db:
                rows = db.execute("SELECT seq, item FROM outbox ORDER BY seq").fetchall()
                high = db.execute("SELECT max(seq) FROM sqlite_sequence").fetchone()
        except sqlite3.Error as exc:
            raise ConfigurationError(f"outbox {legacy} (the earlier form): {exc}") from exc
        top = max([int(high[0]) if high and high[0] is not None else 0, *(s for s, _ in rows)])
        if rows:
            with self._lock:
                self._next = max(self._next, int(rows[0][0]))
                self._append([bytes(item) for _, item in rows])
        with self._lock:
            self._next = max(self._next, top + 1)
        if rows:
            log.warning("outbox: %d item(s) moved from %s into %s", len(rows), legacy, self.path)
        for suffix in ("", "-wal", "-shm", "-journal"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{legacy}{suffix}")

    def _recover(self) -> None:
        """Read every segment back: keep its intact frames, cut off an interrupted
        append, delete what the warehouse already holds."""
        for first, path in _segment_files(self.path):
            data = path.read_bytes()
            end, last = 0, first - 1
            for seq, _, frame_end in _frames(data):
                if end == 0 and seq != first:
                    break
                end, last = frame_end, seq
            if end < len(data):
                log.warning(
                    "outbox %s: %d byte(s) after item %d are an interrupted append (never "
                    "acknowledged): cut off",
                    path,
                    len(data) - end,
                    last,
                )
                with open(path, "r+b") as fh:
                    fh.truncate(end)
                    os.fsync(fh.fileno())
            if last < first or last <= self._removed:
                path.unlink()
                continue
            if self._segments and first <= self._segments[-1].last:
                raise ConfigurationError(
                    f"outbox {self.path}: segment {path.name} overlaps the one before it"
                )
            self._segments.append(_Segment(path, first, last, end))

    # -- writing -------------------------------------------------------------------

    def append(self, items: Sequence[bytes]) -> list[int]:
        """Store `items` durably, in one write; their numbers, in order. Raises `OSError`
        (nothing stored) if they cannot be written."""
        if not items:
            return []
        with self._lock:
            return self._append(items)

    def _append(self, items: Sequence[bytes]) -> list[int]:
        if self._closed:
            raise ValueError(f"outbox {self.path} is closed")
        first = self._next
        data = b"".join([_frame(seq, item) for seq, item in enumerate(items, start=first)])
        if self._active is not None and self._segments[-1].size >= _SEGMENT_BYTES:
            self._close_active()
        if self._active is None:
            self._start_segment(first)
        segment, fd = self._segments[-1], self._active
        assert fd is not None
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fdatasync(fd)
        except BaseException:
            self._undo(segment)
            raise
        segment.last = first + len(items) - 1
        segment.size += len(data)
        self._next = segment.last + 1
        return list(range(first, self._next))

    def _start_segment(self, first: int) -> None:
        path = self.path / f"{first:020d}{_SUFFIX}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
        try:
            _fsync_dir(self.path)  # the file itself survives a crash, not only its data
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        self._segments.append(_Segment(path, first, first - 1, 0))
        self._active = fd

    def _undo(self, segment: _Segment) -> None:
        """After a failed write: cut what it left off the segment, or, if that fails
        too, leave the segment for good (a new one takes the next append), so nothing is
        ever appended behind a torn frame."""
        fd = self._active
        assert fd is not None
        try:
            os.ftruncate(fd, segment.size)
            os.fsync(fd)
        except OSError:
            log.exception("outbox %s: a failed append could not be cut off", segment.path)
            self._close_active()
        if segment.last < segment.first:  # nothing in it: not a segment
            self._close_active()
            self._segments.pop()
            with contextlib.suppress(OSError):
                segment.path.unlink()

    def _close_active(self) -> None:
        if self._active is not None:
            with contextlib.suppress(OSError):
                os.close(self._active)
            self._active = None

    # -- reading and removing ------------------------------------------------------

    def read(self, limit: int, *, after: int = 0) -> list[tuple[int, bytes]]:
        """Up to `limit` items numbered above `after`, oldest first."""
        out: list[tuple[int, bytes]] = []
        with self._lock:
            after = max(after, self._removed)
            for segment in self._segments:
                if len(out) >= limit:
                    break
                if segment.last <= after:
                    continue
                with open(segment.path, "rb") as fh:
                    data = fh.read(segment.size)
                for seq, start, end in _frames(data):
                    if seq > after:
                        out.append((seq, data[start:end]))
                        if len(out) >= limit:
                            break
        return out

    def remove_through(self, seq: int) -> None:
        """Forget every item up to and including `seq` (the warehouse holds them)."""
        with self._lock:
            seq = min(seq, self._next - 1)  # never past what was appended
            if seq <= self._removed:
                return
            mark = self.path / _MARK
            staged = self.path / (_MARK + ".tmp")
            with open(staged, "w", encoding="ascii") as fh:
                fh.write(f"{seq}\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(staged, mark)
            _fsync_dir(self.path)
            self._removed = seq
            # The next append starts a segment of its own, so this one can go whole.
            self._close_active()
            while self._segments and self._segments[0].last <= seq:
                with contextlib.suppress(FileNotFoundError):
                    self._segments.pop(0).path.unlink()

    def count(self) -> int:
        """How many items wait for the warehouse."""
        with self._lock:
            return sum(max(0, s.last - max(s.first - 1, self._removed)) for s in self._segments)

    def numbers(self) -> list[int]:
        """The numbers of the items that wait for the warehouse, oldest first."""
        with self._lock:
            return [
                seq
                for s in self._segments
                for seq in range(max(s.first, self._removed + 1), s.last + 1)
            ]

    def close(self) -> None:
        """Close the files and give up the lock; safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._close_active()
            os.close(self._lock_fd)

    @staticmethod
    def pending(path: Path | str) -> int:
        """How many items the outbox at `path` holds for the warehouse, read without
        its lock while its ingest runs (a benchmark waiting for the drain, a test): an
        append in progress is not counted yet."""
        directory = Path(path)
        if not directory.is_dir():
            return 0
        removed = _read_mark(directory)
        waiting = 0
        for _, segment in _segment_files(directory):
            try:
                data = segment.read_bytes()
            except FileNotFoundError:  # removed meanwhile
                continue
            waiting += sum(1 for seq, _, _ in _frames(data) if seq > removed)
        return waiting
