"""Error fingerprints: one stable, keyed, content-free identifier per kind of failure.

The recipe (version 1), computed only from code structure:

1. The exception's type, qualified: `module.QualName` (`builtins.ValueError`,
   `myapp.router.RouteError`).
2. Its traceback, outermost to innermost, one line per frame: `module:qualname`, where
   `module` is the frame's importable module name (`__name__` of its globals, i.e. the
   path relative to its package root: `myapp.engine.router`) and `qualname` is the code
   object's qualified name (`Router.route.<locals>.pick`). Code with no module name
   (`exec`, embedded interpreters) falls back to the file's basename without extension.
   Consecutive repeats of a frame (recursion) collapse to one; only the innermost 32
   frames count, so recursion depth does not split one bug into many.
3. No line numbers, for any frame: an edit elsewhere in a file would otherwise give the
   same bug a new fingerprint in every release. Two raise sites of the same exception
   type in the same function therefore share a fingerprint; the app version, which
   travels with every envelope, separates releases.
4. The chain: the `__cause__` (or, unless suppressed, `__context__`) and sub-exceptions
   of an `ExceptionGroup`, each by steps 1-3, up to 8 exceptions.
5. HMAC-SHA256 of the UTF-8 text of steps 1-4 under the per-fleet key, as 64 hex digits.
   Without the key nobody can test guesses of which code path failed on a device.

Never included: the message, arguments, locals, absolute paths (so no user names).

A fingerprint is an unbounded domain, so it is never a label value as such:
`fingerprint_label` maps it into the closed domain the policy declares for the
fingerprint signal (see `policies.FingerprintPolicy`): a listed known fingerprint (first
16 hex digits), else its hash bucket (the fingerprint modulo the number of buckets),
else `other`.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Sequence
from types import TracebackType

from policies import FINGERPRINT_DIGITS, OTHER, fingerprint_bucket_name

__all__ = ["ErrorFingerprinter", "fingerprint_label"]

RECIPE = "qw-fp-1"
_MAX_FRAMES = 32
_MAX_EXCEPTIONS = 8
_MIN_KEY_BYTES = 16


def _type_name(exc: BaseException) -> str:
    cls = type(exc)
    return f"{cls.__module__}.{cls.__qualname__}"


def _frame_key(tb: TracebackType) -> str:
    frame = tb.tb_frame
    code = frame.f_code
    module = frame.f_globals.get("__name__")
    if not isinstance(module, str) or not module:
        # Never the directory: it would carry the user's home folder.
        base = os.path.basename(code.co_filename.replace("\\", "/"))
        module = base.rsplit(".", 1)[0] if not base.startswith("<") else base
    return f"{module}:{code.co_qualname}"


def _frames(exc: BaseException) -> list[str]:
    keys: list[str] = []
    tb = exc.__traceback__
    while tb is not None:
        key = _frame_key(tb)
        if not keys or keys[-1] != key:
            keys.append(key)
        tb = tb.tb_next
    return keys[-_MAX_FRAMES:]


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and those it carries, in a fixed order, without cycles."""
    seen: set[int] = set()
    order: list[BaseException] = []
    pending = [exc]
    while pending and len(order) < _MAX_EXCEPTIONS:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        order.append(current)
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        if current.__cause__ is not None:
            pending.append(current.__cause__)
        elif current.__context__ is not None and not current.__suppress_context__:
            pending.append(current.__context__)
    return order


class ErrorFingerprinter:
    """Turns exceptions into fingerprints that are equal exactly when the failure is.

    Equal across runs, machines, users and install locations; see the module docstring
    for the recipe. Cheap enough to call in an exception handler; never raises.
    """

    def __init__(self, fleet_key: bytes) -> None:
        if len(fleet_key) < _MIN_KEY_BYTES:
            raise ValueError(f"fleet_key must be at least {_MIN_KEY_BYTES} bytes")
        self._key = bytes(fleet_key)

    def fingerprint(self, exc: BaseException) -> str:
        """HMAC-SHA256 (hex) of `exc`'s normalised description under the fleet key."""
        return hmac.new(self._key, self.describe(exc).encode(), hashlib.sha256).hexdigest()

    @staticmethod
    def describe(exc: BaseException) -> str:
        """The text that is hashed: types and `module:qualname` frames, nothing else.

        For local debugging only; it stays on the device (only the keyed hash leaves).
        """
        lines = [RECIPE]
        for i, item in enumerate(_chain(exc)):
            lines.append(f"exception {i} {_type_name(item)}")
            lines.extend(f"  {key}" for key in _frames(item))
        return "\n".join(lines)


def fingerprint_label(fingerprint: str, domain: Sequence[str]) -> str:
    """The value under which `fingerprint` is counted, given the label's declared domain."""
    known = fingerprint[:FINGERPRINT_DIGITS]
    if known in domain:
        return known
    buckets = sum(1 for v in domain if v.startswith("b") and len(v) < FINGERPRINT_DIGITS)
    if buckets:
        return fingerprint_bucket_name(int(fingerprint, 16) % buckets)
    return OTHER
