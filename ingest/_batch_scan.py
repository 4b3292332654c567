"""Counting a batch's items before parsing it.

An `EnvelopeBatch` is ``{"envelopes": ["<item>", ...]}``. Parsing it whole to count its
items costs memory in proportion to the number of items (15 MiB of tiny items is a few
million Python strings), so the count is taken first, by a scan that builds nothing:
compiled patterns step over whitespace and escaped JSON strings, `bytes.find` over plain
ones (a base64 item has no escapes: memchr runs at gigabytes per second, the pattern
engine at a fraction of that, about 100 µs per batch of ten 2 KB items), and the scan
stops as soon as the count passes the limit. Pure functions on bytes, no I/O.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["NotABatch", "count_batch_items"]

_WS: Final = re.compile(rb"[ \t\n\r]*")
# A JSON string as RFC 8259 writes it, unrolled (runs of plain characters between
# escapes) so a long base64 item is one fast character-class run.
_STRING: Final = re.compile(
    rb'"[^"\\\x00-\x1f]*(?:\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4})[^"\\\x00-\x1f]*)*"'
)
_ESCAPES_AND_CONTROLS: Final = bytes(0x5C if b < 0x20 else b for b in range(256))
"""A `bytes.translate` table that turns the bytes a JSON string may not hold raw (RFC
8259: they must be escaped) into a backslash: one `in` then finds either (a table
translation is about three times faster than deleting them and comparing lengths)."""
_KEY: Final = b'"envelopes"'


class NotABatch(ValueError):
    """The body does not have the shape of an envelope batch, from `position` on."""

    def __init__(self, position: int, expected: str) -> None:
        super().__init__(f"at byte {position}: expected {expected}")
        self.position = position


def count_batch_items(body: bytes, limit: int) -> int:
    """The number of items of ``{"envelopes": [string, ...]}`` in `body`, or `limit` + 1
    as soon as there are more than `limit` (the rest is not read).

    Raises `NotABatch` at the first byte that does not fit that shape (another key, an
    item that is not a string, trailing data, or not JSON at all). The strings are not
    decoded: whether each item is valid is the parser's question, once the count is known
    to be small.
    """
    pos = _expect(body, _skip(body, 0), b"{", "an object")
    pos = _skip(body, pos)
    if not body.startswith(_KEY, pos):
        raise NotABatch(pos, 'the key "envelopes" (and no other)')
    pos = _expect(body, _skip(body, pos + len(_KEY)), b":", "':'")
    pos = _expect(body, _skip(body, pos), b"[", "an array of items")
    count = 0
    pos = _skip(body, pos)
    if body.startswith(b"]", pos):
        pos += 1
    else:
        while True:
            end = _string_end(body, pos)
            if end is None:
                raise NotABatch(pos, f"item {count} as a JSON string")
            count += 1
            if count > limit:
                return count
            pos = _skip(body, end)
            if body.startswith(b"]", pos):
                pos += 1
                break
            pos = _skip(body, _expect(body, pos, b",", "',' or ']'"))
    pos = _expect(body, _skip(body, pos), b"}", "'}' (no other key)")
    pos = _skip(body, pos)
    if pos != len(body):
        raise NotABatch(pos, "the end of the body")
    return count


def _string_end(body: bytes, pos: int) -> int | None:
    """Where the JSON string starting at `pos` ends, or None if none starts there."""
    if not body.startswith(b'"', pos):
        return None
    close = body.find(b'"', pos + 1)
    if close == -1:
        return None
    if b"\\" not in body[pos + 1 : close].translate(_ESCAPES_AND_CONTROLS):
        return close + 1  # no escapes, no raw control character: a plain JSON string
    match = _STRING.match(body, pos)  # escapes: the full grammar
    return None if match is None else match.end()


def _skip(body: bytes, pos: int) -> int:
    match = _WS.match(body, pos)
    assert match is not None  # the pattern matches the empty string
    return match.end()


def _expect(body: bytes, pos: int, token: bytes, what: str) -> int:
    if not body.startswith(token, pos):
        raise NotABatch(pos, what)
    return pos + len(token)
