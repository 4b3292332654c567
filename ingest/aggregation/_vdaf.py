"""The VDAF of a task and the verification key both aggregators derive for it.

Both aggregators share one 32-byte secret (the VDAF verify key); each task gets its own
key, HMAC-SHA256(verify_key, task context), so a proof checked under one policy's task
says nothing about another. The context is the one devices shard with
(`policies.task_context`), which also binds each report to its policy and task.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

from client._shares import task_vdaf
from policies import task_context

__all__ = ["VERIFY_KEY_BYTES", "parse_verify_key", "task_vdaf", "task_verify_key"]

VERIFY_KEY_BYTES = 32


def task_verify_key(verify_key: bytes, policy_hash: str, task_id: str) -> bytes:
    """HMAC-SHA256(verify_key, task_context(policy_hash, task_id)): 32 bytes."""
    if len(verify_key) != VERIFY_KEY_BYTES:
        raise ValueError(f"the verify key must be {VERIFY_KEY_BYTES} bytes")
    return hmac.new(verify_key, task_context(policy_hash, task_id), hashlib.sha256).digest()


def parse_verify_key(text: str) -> bytes:
    """32 bytes from 64 hex digits or standard base64; ValueError otherwise."""
    text = text.strip()
    raw: bytes | None = None
    if len(text) == 2 * VERIFY_KEY_BYTES:
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raw = None
    if raw is None:
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("the verify key is neither 64 hex digits nor base64") from None
    if len(raw) != VERIFY_KEY_BYTES:
        raise ValueError(f"the verify key must decode to {VERIFY_KEY_BYTES} bytes, got {len(raw)}")
    return raw
