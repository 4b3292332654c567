"""The spool: envelopes (and deletion requests) not yet accepted by the ingest, on disk.

Every pending envelope is one file in `<state_dir>/spool/`, encrypted with NaCl's
SecretBox (XSalsa20-Poly1305) under a random key kept in `<state_dir>/spool.key` (mode
0600). Files are written atomically (temp file, fsync, rename, directory fsync) before
`put` returns, so a crash or a restart while offline loses nothing: the next `Spool` on
the same state directory loads them again, oldest sequence first. A file is removed
only once the ingest has answered for it (`acknowledge`).

Encryption at rest is for everything, so content-tier aggregates are always encrypted;
it protects the spool against backups, sync tools and other users who can read the
state directory's files but not the key file. A process running as the user can read
both; the OS account is the boundary, as for the device key next to it.

Envelopes handed to the sender (`take`) stay on disk and are tracked as in flight; a
consent revocation (`purge_tier`) rewrites pending *and* in-flight copies, so an
envelope that fails to send and is put back no longer carries the revoked tier.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from uuid import UUID

from nacl.exceptions import CryptoError
from nacl.secret import SecretBox
from nacl.utils import random as random_bytes
from pydantic import ValidationError

from client._drops import DropCounter, DropReason
from client._errors import SpoolError
from client._ledger import write_atomically
from schemas import MAX_BATCH, DeletionRequestV1, EnvelopeV1, SignedDeletionRequest, Tier

__all__ = ["Spool"]

_ENVELOPE_SUFFIX = ".env"
_DELETION_SUFFIX = ".del"
_UNSIGNED_DELETION_SUFFIX = ".req"


def _load_or_create_key(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise SpoolError(f"spool key {path} has mode {mode:o}; chmod 600") from None
        key = path.read_bytes()
        if len(key) != SecretBox.KEY_SIZE:
            raise SpoolError(f"spool key {path} holds {len(key)} bytes") from None
        return key
    key = random_bytes(SecretBox.KEY_SIZE)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
        f.flush()
        os.fsync(f.fileno())
    return key


STALE_TMP_SECONDS = 600.0
"""A `*.tmp` file in the spool older than this is a write a crash cut short (a write
takes milliseconds): opening a `Spool` removes it, and leaves a younger one alone."""


class Spool:
    """A bounded, durable, encrypted FIFO of envelopes, plus pending deletion requests.

    `put` returns False (counted `queue_full`) when `capacity` envelopes are pending, so
    the caller never blocks. Thread-safe.
    """

    DIR_NAME = "spool"
    KEY_FILE = "spool.key"

    def __init__(self, state_dir: Path | str, capacity: int, drops: DropCounter) -> None:
        self._dir = Path(state_dir) / self.DIR_NAME
        self._capacity = capacity
        self._drops = drops
        self._lock = threading.Lock()
        try:
            self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._box = SecretBox(_load_or_create_key(Path(state_dir) / self.KEY_FILE))
        except OSError as exc:
            raise SpoolError(f"cannot open the spool in {self._dir}: {exc}") from exc
        self._items: deque[EnvelopeV1] = deque()
        self._in_flight: dict[UUID, EnvelopeV1] = {}
        self._deletions: dict[UUID, DeletionRequestV1 | SignedDeletionRequest] = {}
        self._load()

    # -- envelopes -------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._items) + len(self._in_flight)

    @property
    def waiting(self) -> int:
        """Envelopes queued to send (not in flight)."""
        return len(self._items)

    def unsent(self) -> bool:
        """Whether anything (an envelope or a deletion request) waits to be sent."""
        return bool(self._items or self._deletions)

    def put(self, envelope: EnvelopeV1) -> bool:
        """Store an envelope durably and queue it; False when full or unwritable (counted)."""
        with self._lock:
            if len(self._items) + len(self._in_flight) >= self._capacity:
                self._drops.add(DropReason.QUEUE_FULL)
                return False
            try:
                self._write(self._envelope_path(envelope), envelope.model_dump_json().encode())
            except OSError:
                self._drops.add(DropReason.SPOOL_FAILED)
                return False
            self._items.append(envelope)
            return True

    def take(self, n: int = MAX_BATCH) -> list[EnvelopeV1]:
        """Hand up to `n` envelopes, oldest first, to the sender (they stay on disk)."""
        with self._lock:
            out = [self._items.popleft() for _ in range(min(n, len(self._items)))]
            for envelope in out:
                self._in_flight[envelope.envelope_id] = envelope
            return out

    def put_back(self, envelopes: Sequence[EnvelopeV1]) -> None:
        """Return a batch that failed to send to the front, keeping order.

        The spool's own copy is queued (it reflects any purge made while in flight).
        """
        with self._lock:
            back = [self._in_flight.pop(e.envelope_id, e) for e in envelopes]
            self._items.extendleft(reversed(back))

    def acknowledge(self, envelopes: Sequence[EnvelopeV1]) -> None:
        """The ingest answered for these (accepted or rejected): forget them."""
        with self._lock:
            for envelope in envelopes:
                kept = self._in_flight.pop(envelope.envelope_id, envelope)
                self._envelope_path(kept).unlink(missing_ok=True)

    def purge_tier(self, tier: Tier, *, consent_hash: str, consented_tiers: Sequence[Tier]) -> int:
        """Strip `tier`'s aggregates from every unsent envelope; returns how many changed.

        The rewritten envelopes carry the consent state after the revocation.
        """

        def strip(envelope: EnvelopeV1) -> EnvelopeV1:
            kept = [a for a in envelope.aggregates if a.tier is not tier]
            signals = {a.signal for a in envelope.aggregates if a.tier is tier}
            signals |= {r.task.partition("/")[0] for r in envelope.reports if r.tier is tier}
            return envelope.model_copy(
                update={
                    "aggregates": kept,
                    "reports": [r for r in envelope.reports if r.tier is not tier],
                    "suppressed": {
                        s: n for s, n in envelope.suppressed.items() if s not in signals
                    },
                    "consent_hash": consent_hash,
                    "consented_tiers": list(consented_tiers),
                }
            )

        # With no tier consented any more, nothing may leave: every envelope is emptied
        # and dropped (an empty one would still say when the app ran).
        return self._rewrite(
            lambda e: (
                not consented_tiers
                or any(a.tier is tier for a in e.aggregates)
                or any(r.tier is tier for r in e.reports)
            ),
            (lambda e: strip(e).model_copy(update={"suppressed": {}}))
            if not consented_tiers
            else strip,
            drop_empty=DropReason.CONSENT_REVOKED,
        )

    def expire(self, now: datetime, retention_days: Callable[[Tier], int]) -> int:
        """Strip aggregates kept past their tier's retention; drop envelopes left empty."""

        # Runs at every window close over the whole spool: the cut-offs are computed once,
        # and an envelope younger than the shortest retention is passed over unread.
        cutoff = {tier: now - timedelta(days=retention_days(tier)) for tier in Tier}
        latest = max(cutoff.values())

        def expired(envelope: EnvelopeV1) -> set[Tier]:
            end = envelope.window_end
            if end > latest:
                return set()
            tiers = {a.tier for a in envelope.aggregates} | {r.tier for r in envelope.reports}
            return {t for t in tiers if end <= cutoff[t]}

        def strip(envelope: EnvelopeV1) -> EnvelopeV1:
            gone = expired(envelope)
            kept = [a for a in envelope.aggregates if a.tier not in gone]
            reports = [r for r in envelope.reports if r.tier not in gone]
            return envelope.model_copy(update={"aggregates": kept, "reports": reports})

        return self._rewrite(lambda e: bool(expired(e)), strip, drop_empty=DropReason.EXPIRED)

    def expire_ahead(
        self, ingest_now: datetime, skew: timedelta, retention_days: Callable[[Tier], int]
    ) -> int:
        """Strip from envelopes held ahead of the ingest's clock the tiers whose
        retention would end before the ingest's time reaches them (they can never be
        delivered in time: the data ages in real time while it waits); an envelope whose
        wait outlasts every tier's retention is deleted whole. Counted `expired:clock_ahead`."""
        longest = timedelta(days=max(retention_days(t) for t in Tier))

        def wait(envelope: EnvelopeV1) -> timedelta:
            return envelope.window_end - skew - ingest_now

        def gone(envelope: EnvelopeV1) -> set[Tier]:
            left = wait(envelope)
            if left <= timedelta(0):
                return set()
            tiers = {a.tier for a in envelope.aggregates} | {r.tier for r in envelope.reports}
            return {t for t in tiers if left > timedelta(days=retention_days(t))}

        def strip(envelope: EnvelopeV1) -> EnvelopeV1:
            if wait(envelope) > longest:
                return envelope.model_copy(
                    update={"aggregates": [], "reports": [], "suppressed": {}}
                )
            out = gone(envelope)
            kept = [a for a in envelope.aggregates if a.tier not in out]
            reports = [r for r in envelope.reports if r.tier not in out]
            return envelope.model_copy(update={"aggregates": kept, "reports": reports})

        return self._rewrite(
            lambda e: wait(e) > longest or bool(gone(e)),
            strip,
            drop_empty=DropReason.EXPIRED_AHEAD,
        )

    def _rewrite(
        self,
        select: Callable[[EnvelopeV1], bool],
        change: Callable[[EnvelopeV1], EnvelopeV1],
        *,
        drop_empty: DropReason | None = None,
    ) -> int:
        """Apply `change` to the envelopes `select` picks; with `drop_empty`, one left
        with nothing to report (no aggregates, reports or suppression counts) is
        deleted and counted under that reason."""
        changed = 0
        with self._lock:
            items: list[EnvelopeV1] = []
            for envelope in self._items:
                if select(envelope):
                    changed += 1
                    envelope = change(envelope)
                    if drop_empty is not None and not (
                        envelope.aggregates or envelope.reports or envelope.suppressed
                    ):
                        self._envelope_path(envelope).unlink(missing_ok=True)
                        self._drops.add(drop_empty)
                        continue
                    self._write(self._envelope_path(envelope), envelope.model_dump_json().encode())
                items.append(envelope)
            self._items = deque(items)
            for envelope_id, envelope in list(self._in_flight.items()):
                if select(envelope):
                    changed += 1
                    envelope = change(envelope)
                    self._write(self._envelope_path(envelope), envelope.model_dump_json().encode())
                    self._in_flight[envelope_id] = envelope
        return changed

    # -- deletion requests -------------------------------------------------------------

    def put_deletion(
        self, request: DeletionRequestV1 | SignedDeletionRequest, request_id: UUID
    ) -> None:
        """Store a deletion request until the ingest has recorded it.

        An unsigned one (`DeletionRequestV1`) is signed when it is sent, on the sending
        thread: signing may wait on a TPM.
        """
        suffix = (
            _DELETION_SUFFIX
            if isinstance(request, SignedDeletionRequest)
            else _UNSIGNED_DELETION_SUFFIX
        )
        with self._lock:
            try:
                self._write(self._dir / f"{request_id}{suffix}", _dump(request))
            except OSError as exc:
                raise SpoolError(f"cannot store the deletion request: {exc}") from exc
            self._deletions[request_id] = request

    def deletions(self) -> list[tuple[UUID, DeletionRequestV1 | SignedDeletionRequest]]:
        """Deletion requests not yet recorded by the ingest (signed or not yet)."""
        with self._lock:
            return list(self._deletions.items())

    def acknowledge_deletion(self, request_id: UUID) -> None:
        """The ingest recorded this deletion request: forget it."""
        with self._lock:
            self._deletions.pop(request_id, None)
            for suffix in (_DELETION_SUFFIX, _UNSIGNED_DELETION_SUFFIX):
                (self._dir / f"{request_id}{suffix}").unlink(missing_ok=True)

    def reset_after_fork(self) -> None:
        """A fresh lock in a forked child."""
        self._lock = threading.Lock()

    # -- the carried open window (client._carry) ---------------------------------------

    CARRIED_FILE = "open_window.sealed"

    def put_carried(self, plain: bytes) -> None:
        """Store the open window's carried cells, encrypted like the envelopes (replacing
        any record stored before). Raises `SpoolError` if it cannot be written."""
        try:
            self._write(self._dir / self.CARRIED_FILE, plain)
        except OSError as exc:
            raise SpoolError(f"cannot store the carried window: {exc}") from exc

    def read_carried(self) -> bytes | None:
        """The carried cells stored by the last run, or None. They stay stored until
        `drop_carried` (once released: a crash before then loses nothing); a record
        that cannot be decrypted is removed and counted."""
        path = self._dir / self.CARRIED_FILE
        if not path.exists():
            return None
        plain = self._read(path)
        if plain is None:
            path.unlink(missing_ok=True)
            self._drops.add(DropReason.SPOOL_CORRUPT)
        return plain

    def drop_carried(self) -> None:
        """Forget the carried cells (released, or discarded). Raises `SpoolError` if the
        record cannot be removed."""
        try:
            (self._dir / self.CARRIED_FILE).unlink(missing_ok=True)
        except OSError as exc:
            raise SpoolError(f"cannot remove the carried window: {exc}") from exc

    # -- storage -----------------------------------------------------------------------

    def _envelope_path(self, envelope: EnvelopeV1) -> Path:
        # The sequence first, so a directory listing sorts oldest first.
        return self._dir / f"{envelope.sequence:020d}-{envelope.envelope_id}{_ENVELOPE_SUFFIX}"

    def _write(self, path: Path, plain: bytes) -> None:
        write_atomically(path, bytes(self._box.encrypt(plain)))

    def _read(self, path: Path) -> bytes | None:
        try:
            return bytes(self._box.decrypt(path.read_bytes()))
        except (OSError, CryptoError):
            return None

    def _load(self) -> None:
        for path in sorted(self._dir.iterdir()):
            if path.name.endswith(".tmp"):
                # A write that never completed, or one another `Spool` on the directory
                # (another `Telemetry`, a process) is making now: only a stale one goes.
                try:
                    if time.time() - path.stat().st_mtime > STALE_TMP_SECONDS:
                        path.unlink(missing_ok=True)
                except OSError:
                    pass
                continue
            plain = self._read(path)
            try:
                if plain is None:
                    raise ValueError("cannot decrypt")
                if path.suffix == _ENVELOPE_SUFFIX:
                    self._items.append(EnvelopeV1.model_validate_json(plain))
                elif path.suffix == _DELETION_SUFFIX:
                    self._deletions[UUID(path.stem)] = SignedDeletionRequest.model_validate_json(
                        plain
                    )
                elif path.suffix == _UNSIGNED_DELETION_SUFFIX:
                    self._deletions[UUID(path.stem)] = DeletionRequestV1.model_validate_json(plain)
            except (ValueError, ValidationError):
                # Unreadable (another key, or damaged): useless to anyone; count it.
                self._drops.add(DropReason.SPOOL_CORRUPT)
                path.unlink(missing_ok=True)


def _dump(request: DeletionRequestV1 | SignedDeletionRequest) -> bytes:
    return request.model_dump_json().encode()
