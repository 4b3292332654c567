"""The chain's hashes are over one canonical JSON text: the fast writer of the common
entry must write exactly what the JSON encoder writes, or a chain written by one would
not verify under the other."""

from __future__ import annotations

import hashlib

from hypothesis import given
from hypothesis import strategies as st

from auditlog._log import _CANONICAL, AuditEntry, _canonical_fast, entry_hash

_TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=80)
_OPTIONAL = st.none() | _TEXT


@given(
    seq=st.integers(min_value=0, max_value=2**63),
    at=st.floats(allow_nan=False, allow_infinity=False),
    action=_TEXT,
    decision=_TEXT,
    device=_OPTIONAL,
    reason=_OPTIONAL,
    detail=_OPTIONAL,
    prev=_TEXT,
)
def test_the_fast_text_is_the_encoders(
    seq: int,
    at: float,
    action: str,
    decision: str,
    device: str | None,
    reason: str | None,
    detail: str | None,
    prev: str,
) -> None:
    entry = AuditEntry(seq, at, action, decision, device, reason, detail, prev, "")
    expected = _CANONICAL.encode(
        {
            "seq": seq,
            "at": at,
            "action": action,
            "decision": decision,
            "device_id": device,
            "reason": reason,
            "detail": detail,
            "prev_hash": prev,
        }
    )
    assert _canonical_fast(seq, at, entry, prev) == expected
    assert entry_hash(seq, at, entry, prev) == hashlib.sha256(expected.encode()).hexdigest()


def test_other_types_go_through_the_encoder() -> None:
    """A bool for a number, an int for the time, a float that is not finite: the
    encoder writes those (`true`, `5`, `Infinity`), so the fast writer declines."""
    entry = AuditEntry(1, 2.0, "envelope", "accepted", None, None, None, "h", "")
    assert _canonical_fast(True, 2.0, entry, "h") is None
    assert _canonical_fast(1, 5, entry, "h") is None
    assert _canonical_fast(1, float("inf"), entry, "h") is None
    expected = _CANONICAL.encode(
        {
            "seq": 1,
            "at": 5,
            "action": "envelope",
            "decision": "accepted",
            "device_id": None,
            "reason": None,
            "detail": None,
            "prev_hash": "h",
        }
    )
    assert entry_hash(1, 5, entry, "h") == hashlib.sha256(expected.encode()).hexdigest()
