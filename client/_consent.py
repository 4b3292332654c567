"""Consent per tier: versioned, signed, durable records, and the gate built on them.

Quietwire is opt-in. Nothing of a tier leaves the device until the app records a grant
for that tier (the policy's consent defaults are all `denied`), and each tier needs its
own grant: there is no "grant all", so the `content` tier is never switched on as a side
effect of consenting to diagnostics. A grant made under an older consent notice
(`Policy.consent.notice_version`) no longer counts: the user must be asked again.

Every decision is a new `ConsentRecord` with the next version number, signed by the
device key over its canonical bytes, and the whole history is written durably (temp
file, fsync, atomic rename). By default that happens before `grant`/`revoke` return;
after `defer_writes()` (the client's background mode) a decision takes effect in memory
at once and `persist()`, called by the worker, makes it durable, in order.
`consent_hash()` summarises the current decision per tier; it travels in each envelope
so the ingest can refuse a tier whose consent the envelope does not carry.
"""

from __future__ import annotations

import hashlib
import json
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
        self._sign = sign
        self._policy = policy
        self._policy_hash = policy.content_hash
        self._clock = clock
        self._mutex = threading.Lock()
        self._write_lock = threading.Lock()
        """Serialises `persist` calls, so an older history never replaces a newer one."""
        self._write_through = True
        self._history = self._load()
        self._written = len(self._history)
        """How many records of `_history` are on disk."""
        self._current = {s.record.tier: s for s in self._history}
        # Asked at every window close and put in every envelope: computed once per change.
        self._hash = consent_hash_of(s.record for s in self._current.values())

    def defer_writes(self) -> None:
        """From now on a decision takes effect in memory when `grant`/`revoke` return, and
        is durable only once `persist()` has run (on a thread that may wait on disk)."""
        with self._mutex:
            self._write_through = False

    @property
    def unpersisted(self) -> int:
        """Decisions in effect but not yet on disk (only after `defer_writes`)."""
        with self._mutex:
            return len(self._history) - self._written

    def persist(self) -> None:
        """Write every decision not yet on disk (fsync, atomic rename). Does file I/O:
        the worker's job. Raises `ConsentError` if the history cannot be written; the
        decisions stay in effect and the next call tries again."""
        with self._write_lock:
            with self._mutex:
                if self._written == len(self._history):
                    return
                history = list(self._history)
            self._write(history)
            with self._mutex:
                self._written = max(self._written, len(history))

    def grant(self, tier: Tier) -> SignedConsentRecord:
        """Record that the user allows `tier` to be sent; durable when this returns
        (unless `defer_writes` was called: then once `persist` has run)."""
        with self._mutex:
            current = self._current.get(tier)
            if current is not None and current.record.granted and self._is_fresh(current):
                return current  # already granted under this policy and notice
            return self._record(tier, granted=True)

    def revoke(self, tier: Tier) -> SignedConsentRecord:
        """Record that the user withdraws `tier`; durable when this returns (unless
        `defer_writes` was called: it takes effect at once, durable once `persist` ran).

        The caller must then purge the tier's local data and spool, and send the
        returned record as its deletion request.
        """
        with self._mutex:
            current = self._current.get(tier)
            if current is not None and not current.record.granted:
                return current
            return self._record(tier, granted=False)

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
        """The whole history, oldest first."""
        with self._mutex:
            return list(self._history)

    def reset_after_fork(self) -> None:
        """Fresh locks in a forked child (a parent thread may have held one)."""
        self._mutex = threading.Lock()
        self._write_lock = threading.Lock()

    # -- internals -----------------------------------------------------------------

    def _is_fresh(self, signed: SignedConsentRecord) -> bool:
        return signed.record.notice_version >= self._policy.consent.notice_version

    def _record(self, tier: Tier, *, granted: bool) -> SignedConsentRecord:
        record = ConsentRecord(
            tier=tier,
            granted=granted,
            version=len(self._history) + 1,
            notice_version=self._policy.consent.notice_version,
            recorded_at=self._clock(),
            policy_hash=self._policy_hash,
        )
        try:
            signature = self._sign(record.canonical_bytes())
        except Exception as exc:
            raise ConsentError(f"cannot sign the consent record: {exc}") from exc
        signed = SignedConsentRecord(record=record, signature=signature)
        history = [*self._history, signed]
        if self._write_through:
            self._write(history)
            self._written = len(history)
        # Written through: only once durable does the decision take effect. Deferred: at
        # once, in memory (a revocation must stop releases now, not after an fsync).
        self._history = history
        self._current[tier] = signed
        self._hash = consent_hash_of(s.record for s in self._current.values())
        return signed

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
