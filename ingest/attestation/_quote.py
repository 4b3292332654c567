"""Verifying a TPM2_Quote: who signed it, over which nonce, which PCR values, and when."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from tpm2_pytss.constants import TPM2_ALG, TPM2_ST

from ingest.attestation._errors import AttestationError, AttestationReason
from ingest.attestation._tpm_structs import (
    check_attest_header,
    parse_attest,
    parse_public,
    verify_tpm_signature,
)

__all__ = ["PcrPolicy", "TpmClock", "verify_quote"]

_SHA256_SIZE: Final = 32


@dataclass(frozen=True)
class PcrPolicy:
    """Which SHA-256 PCRs a quote must cover and the values each may hold.

    A PCR in `selection` with no entry in `allowed` may hold any value (it is quoted
    for the audit trail only).
    """

    selection: tuple[int, ...]
    allowed: Mapping[int, frozenset[bytes]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.selection or any(not 0 <= i < 24 for i in self.selection):
            raise ValueError(f"PCR selection must be indices 0..23, got {self.selection}")
        if sorted(set(self.selection)) != list(self.selection):
            raise ValueError(f"PCR selection must be sorted and unique, got {self.selection}")
        stray = set(self.allowed) - set(self.selection)
        if stray:
            raise ValueError(f"allowed values given for unselected PCRs {sorted(stray)}")


@dataclass(frozen=True, order=True)
class TpmClock:
    """A TPM's clock state as a quote reports it; ordered by (resets, restarts, clock)."""

    reset_count: int
    restart_count: int
    clock: int
    """Milliseconds the TPM has been powered, across resets."""

    def went_back_from(self, last: TpmClock) -> str | None:
        """Why this state cannot follow `last` on the same TPM, or None if it can."""
        if self.reset_count < last.reset_count:
            return f"resetCount {self.reset_count} < {last.reset_count}"
        if self.reset_count == last.reset_count and self.restart_count < last.restart_count:
            return f"restartCount {self.restart_count} < {last.restart_count}"
        if self.clock < last.clock:
            return f"clock {self.clock} ms < {last.clock} ms"
        return None


def verify_quote(
    ak_public: bytes,
    attest: bytes,
    signature: bytes,
    pcr_values: Mapping[int, bytes],
    *,
    nonce: bytes,
    policy: PcrPolicy,
    last_clock: TpmClock | None = None,
) -> TpmClock:
    """Check a quote by the enrolled AK and return its clock (to keep for the next one).

    The caller has already consumed `nonce` from its `NonceStore`. Checks, in order:
    the AK signature over `attest` (`quote_bad_signature`); TPM-generated quote
    structure; `extraData == nonce` (`nonce_mismatch`); the quoted selection is the
    policy's (`pcr_selection_mismatch`); the digest of the reported values is the quoted
    digest (`pcr_digest_mismatch`); each value is allowed (`pcr_not_allowed`); the clock
    did not go back from `last_clock` (`clock_went_back`).
    """
    ak = parse_public(ak_public, "AK public")
    # The signature first: nothing in an unsigned structure deserves a specific answer.
    verify_tpm_signature(ak, attest, signature, AttestationReason.QUOTE_BAD_SIGNATURE)
    parsed = parse_attest(attest)
    check_attest_header(parsed, int(TPM2_ST.ATTEST_QUOTE))
    if bytes(parsed.extraData) != nonce:
        raise AttestationError(AttestationReason.NONCE_MISMATCH, "the quote is over another nonce")
    quoted = _quoted_selection(parsed.attested.quote.pcrSelect)
    if quoted != policy.selection:
        raise AttestationError(
            AttestationReason.PCR_SELECTION_MISMATCH,
            f"quoted PCRs {quoted}, policy selects sha256 {policy.selection}",
        )
    if sorted(pcr_values) != list(policy.selection) or any(
        len(v) != _SHA256_SIZE for v in pcr_values.values()
    ):
        raise AttestationError(
            AttestationReason.MALFORMED_EVIDENCE,
            f"PCR values must be 32-byte SHA-256 values for exactly {policy.selection}",
        )
    digest = hashlib.sha256(b"".join(pcr_values[i] for i in policy.selection)).digest()
    if digest != bytes(parsed.attested.quote.pcrDigest):
        raise AttestationError(
            AttestationReason.PCR_DIGEST_MISMATCH,
            "the reported PCR values are not the ones the TPM quoted",
        )
    for index, allowed in sorted(policy.allowed.items()):
        if pcr_values[index] not in allowed:
            raise AttestationError(
                AttestationReason.PCR_NOT_ALLOWED,
                f"PCR {index} = {pcr_values[index].hex()} is not an allowed value",
            )
    info = parsed.clockInfo
    clock = TpmClock(int(info.resetCount), int(info.restartCount), int(info.clock))
    if last_clock is not None:
        why = clock.went_back_from(last_clock)
        if why is not None:
            raise AttestationError(AttestationReason.CLOCK_WENT_BACK, why)
    return clock


def _quoted_selection(selections: Any) -> tuple[int, ...] | str:
    """The PCR indices a quote covers if it is one SHA-256 bank, else a description."""
    banks: list[tuple[int, tuple[int, ...]]] = []
    for sel in selections:
        bitmap = bytes(sel.pcrSelect)[: int(sel.sizeofSelect)]
        indices = tuple(
            byte_index * 8 + bit
            for byte_index, byte in enumerate(bitmap)
            for bit in range(8)
            if byte >> bit & 1
        )
        banks.append((int(sel.hash), indices))
    if len(banks) == 1 and banks[0][0] == int(TPM2_ALG.SHA256):
        return banks[0][1]
    return f"banks {[(hex(alg), idx) for alg, idx in banks]}"
