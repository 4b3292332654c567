"""Consent per tier: versioned, signed, durable records, and the gate built on them.

Quietwire is opt-in. Nothing of a tier leaves the device until the app records a grant
for that tier (the policy's consent defaults are all `denied`), and each tier needs its
own grant: there is no "grant all", so the `content` tier is never switched on as a side
effect of consenting to diagnostics. A grant made under an older consent notice
(`Policy.consent.notice_version`) no longer counts: the user must be asked again.

Every decision is a new `ConsentRecord` with the next version number, signed by the
device key over its canonical bytes. Each write re-reads the file under an exclusive lock
on `<file>.lock`, appends only the writer's new decisions after the last record on disk,
and writes the history durably (temp file, fsync, atomic rename): no decision another
`ConsentStore` wrote (in this process or another) is lost. By default that happens
before `grant`/`revoke` return; after `defer_writes()` (the client's background mode) a
decision takes effect in memory at once and `persist()`, called by the worker, makes it
durable, in order.
`consent_hash()` summarises the current decision per tier; it travels in each envelope
so the ingest can refuse a tier whose consent the envelope does not carry.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from client._errors import ClientError
from client._ledger import write_atomically
from policies import Policy
from schemas import Tier

__all__ = [
    "ConsentError",
    "ConsentRecord",
    "ConsentStore",
    "SignedConsentRecord",
    "consent_hash_of",
]

# What a tier may do before any record exists, by the policy's `consent.tiers.*.default`.
_DEFAULT_ALLOWS: dict[str, bool] = {"denied": False}


class ConsentError(ClientError):
    """The consent history cannot be read, signed or written. While it lasts nothing is
    allowed."""


class ConsentRecord(BaseModel):
    """One consent decision for one tier, as the device signs it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tier: Tier
    granted: bool
    version: int = Field(ge=1, description="position in this device's consent history")
    notice_version: int = Field(ge=1, description="the consent notice the user answered")
    recorded_at: AwareDatetime
    policy_hash: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]

    def canonical_bytes(self) -> bytes:
        """The exact bytes that are signed and hashed (sorted keys, no whitespace)."""
        return json.dumps(
            self.model_dump(mode="json"), sort_keys=True, separators=(",", ":")
        ).encode()


class SignedConsentRecord(BaseModel):
    """A consent record with the device key's signature over `record.canonical_bytes()`.

    `signature` is raw bytes in Python and base64 in JSON.
    """

    model_config = ConfigDict(
        frozen=True, extra="forbid", ser_json_bytes="base64", val_json_bytes="base64"
    )

    record: ConsentRecord
    signature: bytes = Field(min_length=1)


class _History(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal[1] = 1
    records: list[SignedConsentRecord]


def _lock_blocking(fd: int) -> None:
    """Wait for an exclusive advisory lock on `fd` (released when `fd` is closed)."""
    try:
        if sys.platform == "win32":
            import msvcrt

            msvcrt.locking(fd, msvcrt.LK_LOCK, 1)
        else:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError as exc:
        raise ConsentError(f"cannot lock the consent history: {exc.strerror or exc}") from exc


def consent_hash_of(records: Iterable[ConsentRecord]) -> str:
    """SHA-256 over the given current records (one per tier), order-independent.

    The ingest recomputes it from the signed records a device sent to check that an
    envelope's consent hash names the decisions it claims.
    """
    by_tier = sorted(records, key=lambda r: r.tier.value)
    tiers = [r.tier for r in by_tier]
    if len(set(tiers)) != len(tiers):
        raise ValueError("consent_hash_of takes at most one record per tier")
    body = b"[" + b",".join(r.canonical_bytes() for r in by_tier) + b"]"
    return hashlib.sha256(body).hexdigest()


class ConsentStore:
    """The device's consent history for one policy, persisted at `path`.

    `sign` signs bytes with the device key (the same key that signs envelopes).
    `clock` is injectable for tests. Thread-safe.

    Every write is a read-modify-write of the file as it is on disk, under an exclusive
    lock on `<path>.lock` (shared with every other `ConsentStore` on the file, in this
    process or another): the history is re-read, only this object's new decisions are
    appended after its last record (one that the file already holds, such as a grant of
    a tier the file shows granted, is skipped), and this object then adopts the file's
    history. So no decision anybody wrote is lost, and a revocation written by another
    object wins over a grant this object only remembers.
    """

    def __init__(
        self,
        path: Path | str,
        sign: Callable[[bytes], bytes],
        policy: Policy,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._path = Path(path)
        self._lock_path = self._path.with_name(self._path.name + ".lock")
        self._sign = sign
        self._policy = policy
        self._policy_hash = policy.content_hash
        self._clock = clock
        self._mutex = threading.Lock()
        self._write_lock = threading.Lock()
        """Serialises this object's writes (the file lock serialises everybody's)."""
        self._write_through = True
        self.before_revocation: Callable[[SignedConsentRecord, str], None] | None = None
        """Called under the file lock with each new revocation and the consent hash
        after it, before the history holding it is written: the revocation's deletion
        request is stored there first, so a kill in between leaves a request whose
        revocation is not written (a deletion the user was asking for), never a
        revocation without its request. If it raises, nothing is written."""
        self._disk = self._load()
        """The history as this object last read or wrote it."""
        self._pending: list[tuple[Tier, bool, SignedConsentRecord | None]] = []
        """Deferred decisions not yet written: (tier, granted, the record made in memory,
        or None when it changed nothing in memory)."""
        self._history: list[SignedConsentRecord] = []
        self._current: dict[Tier, SignedConsentRecord] = {}
        self._hash = ""
        self._rebuild()

    def defer_writes(self) -> None:
        """From now on a decision takes effect in memory when `grant`/`revoke` return, and
        is durable only once `persist()` has run (on a thread that may wait on disk)."""
        with self._mutex:
            self._write_through = False

    @property
    def unpersisted(self) -> int:
        """Decisions in effect but not yet on disk (only after `defer_writes`)."""
        with self._mutex:
            return len(self._pending)

    def persist(
        self, upto: int | None = None
    ) -> list[tuple[SignedConsentRecord, SignedConsentRecord | None]]:
        """Write every decision not yet on disk: re-read the file under its lock, append
        each decision that changes what the file holds (re-numbered and re-signed if the
        file changed meanwhile), write it (fsync, atomic rename) and adopt it. Does file
        I/O: the worker's job. Returns (record made in memory, record written, or None if
        the file already held that decision) per decision that made a record in memory.
        `upto`: write only the oldest `upto` decisions not yet written (`unpersisted`
        read earlier). Raises `ConsentError` if the history cannot be written; the decisions stay in
        effect and the next call tries again."""
        with self._write_lock:
            with self._mutex:
                pending = list(self._pending[:upto])
            if not pending:
                return []
            written: list[tuple[SignedConsentRecord, SignedConsentRecord | None]] = []

            def apply(history: list[SignedConsentRecord]) -> None:
                written.clear()
                for tier, granted, provisional in pending:
                    final = self._append(history, tier, granted, provisional)
                    if provisional is not None:
                        written.append((provisional, final))

            disk = self._locked_update(apply)
            with self._mutex:
                self._disk = disk
                del self._pending[: len(pending)]
                self._rebuild()
            return written

    def grant(self, tier: Tier) -> SignedConsentRecord:
        """Record that the user allows `tier` to be sent; durable when this returns
        (unless `defer_writes` was called: then once `persist` has run)."""
        return self._decide(tier, granted=True)[0]

    def revoke(self, tier: Tier) -> SignedConsentRecord:
        """Record that the user withdraws `tier`; durable when this returns (unless
        `defer_writes` was called: it takes effect at once, durable once `persist` ran).

        The caller must then purge the tier's local data and spool, and send the
        returned record as its deletion request.
        """
        return self._decide(tier, granted=False)[0]

    def decide(self, tier: Tier, *, granted: bool) -> tuple[SignedConsentRecord, bool]:
        """`grant` or `revoke`, and whether that made a new record (False: the tier's
        current decision, on disk when written through, already said so)."""
        return self._decide(tier, granted=granted)

    def allows(self, tier: Tier) -> bool:
        """Whether data of `tier` may leave the device now."""
        with self._mutex:
            current = self._current.get(tier)
            if current is None:
                return _DEFAULT_ALLOWS[self._policy.consent.tiers[tier].default]
            return current.record.granted and self._is_fresh(current)

    def consent_hash(self) -> str:
        """Hash over the current decision per tier (see `consent_hash_of`)."""
        with self._mutex:
            return self._hash

    def current(self) -> dict[Tier, SignedConsentRecord]:
        """The latest decision per tier that has one."""
        with self._mutex:
            return dict(self._current)

    def records(self) -> list[SignedConsentRecord]:
        """The whole history, oldest first (with the deferred decisions not yet
        written, numbered as if written next)."""
        with self._mutex:
            return list(self._history)

    def reset_after_fork(self) -> None:
        """Fresh locks in a forked child (a parent thread may have held one)."""
        self._mutex = threading.Lock()
        self._write_lock = threading.Lock()

    # -- internals -----------------------------------------------------------------

    def _is_fresh(self, signed: SignedConsentRecord) -> bool:
        return signed.record.notice_version >= self._policy.consent.notice_version

    def _holds(self, current: SignedConsentRecord | None, granted: bool) -> bool:
        """Whether `current` already says `granted` (a fresh grant, or a revocation)."""
        if current is None:
            return False
        if granted:
            return current.record.granted and self._is_fresh(current)
        return not current.record.granted

    def _decide(self, tier: Tier, *, granted: bool) -> tuple[SignedConsentRecord, bool]:
        with self._mutex:
            if not self._write_through:
                current = self._current.get(tier)
                if self._holds(current, granted):
                    assert current is not None
                    # Still written: the file may say otherwise by now.
                    self._pending.append((tier, granted, None))
                    return current, False
                signed = self._sign_record(tier, granted, len(self._history) + 1, self._clock())
                self._pending.append((tier, granted, signed))
                self._rebuild()
                return signed, True
        with self._write_lock:
            made: list[SignedConsentRecord | None] = []

            def apply(history: list[SignedConsentRecord]) -> None:
                made.clear()
                made.append(self._append(history, tier, granted, None))

            disk = self._locked_update(apply)
            with self._mutex:
                self._disk = disk
                self._rebuild()
                new = made[0]
                if new is not None:
                    return new, True
                return self._current[tier], False

    def _append(
        self,
        history: list[SignedConsentRecord],
        tier: Tier,
        granted: bool,
        provisional: SignedConsentRecord | None,
    ) -> SignedConsentRecord | None:
        """Append the decision to `history` unless its last record of `tier` says so
        already; the appended record (`provisional` itself if its version fits)."""
        current = None
        for signed in reversed(history):
            if signed.record.tier is tier:
                current = signed
                break
        if self._holds(current, granted):
            return None
        version = len(history) + 1
        if provisional is not None and provisional.record.version == version:
            signed = provisional
        else:
            at = provisional.record.recorded_at if provisional is not None else self._clock()
            signed = self._sign_record(tier, granted, version, at)
        history.append(signed)
        if not granted and self.before_revocation is not None:
            latest = {s.record.tier: s.record for s in history}
            self.before_revocation(signed, consent_hash_of(latest.values()))
        return signed

    def _sign_record(
        self, tier: Tier, granted: bool, version: int, at: datetime
    ) -> SignedConsentRecord:
        record = ConsentRecord(
            tier=tier,
            granted=granted,
            version=version,
            notice_version=self._policy.consent.notice_version,
            recorded_at=at,
            policy_hash=self._policy_hash,
        )
        try:
            signature = self._sign(record.canonical_bytes())
        except Exception as exc:
            raise ConsentError(f"cannot sign the consent record: {exc}") from exc
        return SignedConsentRecord(record=record, signature=signature)

    def _rebuild(self) -> None:
        """`_history`, `_current` and `_hash` from `_disk` and `_pending` (under
        `_mutex`). A decision takes effect only once written (written through) or at
        once in memory (deferred: a revocation must stop releases now)."""
        history = list(self._disk)
        current = {s.record.tier: s for s in history}
        for tier, _granted, provisional in self._pending:
            if provisional is not None:
                history.append(provisional)
                current[tier] = provisional
        self._history = history
        self._current = current
        # Asked at every window close and put in every envelope: computed once per change.
        self._hash = consent_hash_of(s.record for s in current.values())

    def _locked_update(
        self, apply: Callable[[list[SignedConsentRecord]], None]
    ) -> list[SignedConsentRecord]:
        """Under the file lock: re-read the history, `apply` this call's decisions to it,
        write it if they changed it; the history now on disk."""
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise ConsentError(f"{self._lock_path}: cannot open: {exc.strerror or exc}") from exc
        try:
            _lock_blocking(fd)
            history = self._load()
            before = len(history)
            apply(history)
            if len(history) != before:
                self._write(history)
            return history
        finally:
            os.close(fd)  # releases the lock

    def _write(self, history: list[SignedConsentRecord]) -> None:
        data = _History(records=history).model_dump_json(indent=1).encode()
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(self._path, data)
        except OSError as exc:
            raise ConsentError(f"{self._path}: cannot write: {exc.strerror or exc}") from exc

    def _load(self) -> list[SignedConsentRecord]:
        try:
            data = self._path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise ConsentError(f"{self._path}: cannot read: {exc.strerror or exc}") from exc
        try:
            history = _History.model_validate_json(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            key = ".".join(str(p) for p in first["loc"])
            raise ConsentError(f"{self._path}: {key}: {first['msg']}") from exc
        versions = [s.record.version for s in history.records]
        if versions != list(range(1, len(versions) + 1)):
            raise ConsentError(f"{self._path}: record versions are not 1..n in order")
        return history.records
