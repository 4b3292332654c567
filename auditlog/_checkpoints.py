"""Signed checkpoints: the audit log verifiable by someone who does not trust its host.

A hash chain catches an edited entry, but whoever controls the file can edit an entry
and recompute every hash after it, or cut the tail off. So the ingest periodically
signs the chain's head with its audit key (Ed25519, PyNaCl) and stores the checkpoint
(seq, head, time, signature) next to the entries. An auditor who holds the public key
(published by the ingest at ``GET /v1/audit-key``, kept outside the ingest's host)
checks every checkpoint's signature and that the chain still has, at each signed seq,
the signed hash: a rewritten chain no longer matches its old signed heads, a log cut
short of a checkpoint's seq is truncated, and a checkpoint made without the key does
not verify. What happened after the last checkpoint is covered by the next one.
Removing the newest checkpoints together with the entries after an older one leaves a
shorter log that verifies: an auditor catches that by keeping the last checkpoint it
verified (`quietwire audit verify` prints it) and checking the log still holds it.

The signed message is a fixed context string followed by the canonical JSON of
``{"seq", "head", "at"}`` (sorted keys, compact), so a signature over anything else
the key might sign can never pass for a checkpoint.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from auditlog._errors import AuditLogError
from auditlog._log import (
    GENESIS_HASH,
    AuditEntry,
    AuditLog,
    ChainReport,
    Checkpoint,
    CheckpointSigner,
    verify_entries,
)

__all__ = [
    "AuditReport",
    "checkpoint_message",
    "checkpoint_signer",
    "parse_audit_key",
    "verify_checkpoints",
    "verify_log",
]

_CONTEXT: Final = b"quietwire audit checkpoint v1\n"


def checkpoint_message(seq: int, head: str, at: float) -> bytes:
    """The exact bytes a checkpoint's signature covers."""
    body = json.dumps({"seq": seq, "head": head, "at": at}, sort_keys=True, separators=(",", ":"))
    return _CONTEXT + body.encode("ascii")


def checkpoint_signer(key: SigningKey) -> CheckpointSigner:
    """What `AuditLog.append_checkpoint` calls to sign (seq, head, at) with `key`."""

    def sign(seq: int, head: str, at: float) -> bytes:
        return bytes(key.sign(checkpoint_message(seq, head, at)).signature)

    return sign


def parse_audit_key(text: str) -> VerifyKey:
    """An Ed25519 public key from its base64 form (32 bytes); `AuditLogError` if not."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise AuditLogError("the audit key is not base64") from exc
    if len(raw) != 32:
        raise AuditLogError(f"the audit key must be 32 bytes (Ed25519), found {len(raw)}")
    return VerifyKey(raw)


@dataclass(frozen=True, slots=True)
class AuditReport:
    """The chain's verdict and the checkpoints': ok only if both hold."""

    chain: ChainReport
    checkpoints: int
    """How many checkpoints verified (all of them, when ok)."""
    last_checkpoint: Checkpoint | None
    problem: str | None = None
    """The first checkpoint problem; None when every checkpoint verified."""

    @property
    def ok(self) -> bool:
        """The chain is intact and every checkpoint is signed and matches it."""
        return self.chain.ok and self.problem is None

    @property
    def uncovered(self) -> int:
        """Entries after the last checkpoint: no signature vouches for them yet."""
        covered = self.last_checkpoint.seq if self.last_checkpoint is not None else 0
        return max(0, self.chain.entries - covered)


def verify_checkpoints(
    entries: Sequence[AuditEntry], checkpoints: Sequence[Checkpoint], key: VerifyKey
) -> tuple[int, str | None]:
    """(checkpoints verified, the first problem or None) for `entries`, a verified chain
    in seq order. A log with entries and no checkpoint is a problem: nothing ties it
    to the key."""
    if not checkpoints:
        if entries:
            return 0, "no signed checkpoint: nothing ties this log to the audit key"
        return 0, None
    for done, checkpoint in enumerate(sorted(checkpoints, key=lambda c: c.seq)):
        where = f"checkpoint at seq {checkpoint.seq}"
        try:
            key.verify(
                checkpoint_message(checkpoint.seq, checkpoint.head, checkpoint.at),
                checkpoint.signature,
            )
        except BadSignatureError:
            return done, f"{where}: the signature does not verify under the audit key"
        if checkpoint.seq > len(entries):
            return done, (
                f"{where}: the log ends at seq {len(entries)}: entries signed earlier "
                "were cut off (truncated)"
            )
        signed = entries[checkpoint.seq - 1].hash if checkpoint.seq > 0 else GENESIS_HASH
        if signed != checkpoint.head:
            return done, (
                f"{where}: the entry's hash is not the signed head: the chain was "
                "rewritten since it was signed"
            )
    return len(checkpoints), None


def verify_log(log: AuditLog, key: VerifyKey, *, expected_head: str | None = None) -> AuditReport:
    """Verify `log`'s chain (against `expected_head` if given) and its checkpoints."""
    entries = log.entries()
    chain = verify_entries(entries, expected_head=expected_head)
    checkpoints = log.checkpoints()
    last = max(checkpoints, key=lambda c: c.seq) if checkpoints else None
    if not chain.ok:
        return AuditReport(chain, 0, last, None)
    verified, problem = verify_checkpoints(entries, checkpoints, key)
    return AuditReport(chain, verified, last, problem)
