"""A TPM key store that falls back to a software key, and the signing identity of a store.

`FallbackKeyStore` opens the TPM through a factory; if the TPM is absent, or any TPM
call fails later (the chip is reset, swtpm dies, the resource manager refuses), it
switches to its `SoftwareKeyStore` for the rest of the process and counts why. A TPM
that works but cannot attest (the ingest trusts no root of its EK, refuses its quote,
or answers `key_not_attested`) is set aside the same way, for a while: the software key
signs until an attestation succeeds again, so envelopes of the tiers the policy accepts
from software keys still leave, and nothing is deleted for an answer a re-signature
fixes. Each fallback is logged and counted (`failures`, and `dropped()` once a
`Telemetry` attached its counter: `tpm_unavailable:*`, `tpm_failed:*`,
`tpm_unattested:<reason>`). It never raises into the host app: the sealer asks it for
the store to sign with (`signing_store()`, on the sending thread: it may attest over
the network), and on a failure reports it (`report_failure`) and signs again with the
software key. Everything else it answers (`current()`, `assurance`, `device_id`,
`public_key()`) does no I/O: the host app's thread asks those.

Envelopes signed in software are labelled `software` assurance by the ingest, which
refuses them for tiers whose policy requires a TPM: such tiers are
not released at all while the key is software (`Telemetry` asks `current_assurance`
before charging the ledger), and the sealer strips them from envelopes released while
the TPM still worked (counted as `tier_requires_tpm`) instead of sending envelopes that
would be refused.

`device_id_of(store)` and `signature_alg(store)` are what the sealer stamps: a TPM store
names the device after its EK and signs `ecdsa-p256`; a software store is
self-certifying (`schemas.device_id_for`) and signs `ed25519`. `current_assurance(store)`
is what the privacy gate asks at window close (no I/O), to withhold, uncharged, the
tiers a software key may not send.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Literal, Protocol, TypedDict

from client._keys import KeyStore, SoftwareKeyStore
from schemas import device_id_for

__all__ = [
    "FallbackKeyStore",
    "SignedFields",
    "current_assurance",
    "device_id_of",
    "signature_alg",
    "signed_fields",
]

_log = logging.getLogger("client")

SignatureAlg = Literal["ed25519", "ecdsa-p256"]


class Attestor(Protocol):
    """Keeps the TPM key attested (`client.DeviceAttestor`)."""

    last_error: str | None

    def ensure_attested(self) -> bool:
        """Attest if due (network I/O); never raises."""
        ...

    def is_attested(self) -> bool:
        """Whether a current attestation is known, without any I/O."""
        ...

    def invalidate(self) -> None:
        """Forget the current attestation (the ingest no longer knows it)."""
        ...


class DropSink(Protocol):
    """Where fallbacks are counted (`client._drops.DropCounter`)."""

    def add(self, reason: str, n: int = 1) -> None:
        """Count `n` under `reason`."""
        ...


UNATTESTED_HOLD_SECONDS = 60.0
"""After the ingest refused the TPM key, the software key signs at least this long
before the TPM is tried again (re-attesting first): no refusal loop."""


def device_id_of(store: KeyStore) -> str:
    """The device id envelopes signed by `store` must claim."""
    named = getattr(store, "device_id", None)
    if isinstance(named, str):
        return named
    return device_id_for(store.public_key())


def current_assurance(store: KeyStore) -> Literal["software", "tpm"]:
    """The assurance the next envelope would be signed with, without any I/O.

    Unlike `FallbackKeyStore.assurance`, this never re-attests: the window-close path
    asks it, and must not wait on the network.
    """
    if isinstance(store, FallbackKeyStore):
        return store.current().assurance
    return store.assurance


def signature_alg(store: KeyStore) -> SignatureAlg:
    """The `SignedEnvelope.alg` of `store`'s signatures."""
    return "ecdsa-p256" if store.assurance == "tpm" else "ed25519"


class SignedFields(TypedDict):
    """The fields `SignedEnvelope` and `SignedDeletionRequest` share, ready to pass."""

    alg: SignatureAlg
    public_key: bytes
    payload: bytes
    signature: bytes


def signed_fields(store: KeyStore, payload: bytes) -> SignedFields:
    """`store`'s signature over `payload`, as keyword arguments of a signed model.

    pydantic's Base64Bytes decodes its *input* as base64, so the raw bytes are passed
    encoded; the model then holds (and serializes) the raw bytes.
    """
    return SignedFields(
        alg=signature_alg(store),
        public_key=base64.b64encode(store.public_key()),
        payload=base64.b64encode(payload),
        signature=base64.b64encode(store.sign(payload)),
    )


class FallbackKeyStore:
    """The TPM key store while it works, else the software key store. Thread-safe.

    `open_tpm` builds the TPM store (e.g. ``lambda: TpmKeyStore(tcti, dir)``); it is
    called once, here. `tpm_only_tiers` are the tiers the attestation policy refuses
    from software keys (``{t for t in Tier if not policy.accepts_software(t)}``).
    """

    def __init__(
        self,
        open_tpm: Callable[[], KeyStore],
        software: SoftwareKeyStore,
        *,
        tpm_only_tiers: Iterable[str] = (),
        hold_seconds: float = UNATTESTED_HOLD_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._software = software
        self._lock = threading.Lock()
        self.tpm_only_tiers = frozenset(str(t) for t in tpm_only_tiers)
        self.failures: dict[str, int] = {}
        self._drops: DropSink | None = None
        self._attestor: Attestor | None = None
        self._tpm: KeyStore | None = None
        self._hold_seconds = hold_seconds
        self._monotonic = monotonic
        self._software_until = 0.0
        self._unattested = False
        try:
            self._tpm = open_tpm()
        except Exception as exc:  # any TPM trouble means: no TPM, use the software key
            self._count(f"tpm_unavailable:{type(exc).__name__}")
            _log.warning("no usable TPM, signing with the software key: %s", exc)

    @property
    def tpm(self) -> KeyStore | None:
        """The TPM store while it is in use, else None (absent or failed)."""
        return self._tpm

    @property
    def software(self) -> SoftwareKeyStore:
        """The software key (it signs when the TPM cannot, and signs consent records)."""
        return self._software

    def attach_attestor(self, attestor: Attestor) -> None:
        """Re-attest (when due) before each TPM signature: on the sending thread.

        From now on the TPM key signs only while an attestation is current.
        """
        self._attestor = attestor

    def attach_drops(self, drops: DropSink) -> None:
        """Count every fallback in `drops` too (`Telemetry.dropped()`), those so far included."""
        with self._lock:
            self._drops = drops
            for reason, n in self.failures.items():
                drops.add(reason, n)

    def current(self) -> KeyStore:
        """The store that would sign now, without any I/O (no attestation attempt)."""
        tpm = self._tpm
        if tpm is None or self._monotonic() < self._software_until:
            return self._software
        if self._attestor is not None and not self._attestor.is_attested():
            return self._software
        return tpm

    def refresh(self) -> KeyStore:
        """Attest if due, then the store to sign with. Network I/O: the worker's thread."""
        return self.signing_store()

    def signing_store(self) -> KeyStore:
        """The store to sign the next envelope with (re-attesting first when due)."""
        tpm = self._tpm
        if tpm is None or self._monotonic() < self._software_until:
            return self._software
        if self._attestor is not None:
            if not self._attestor.ensure_attested():
                self._note_unattested(self._attestor.last_error or "attestation_failed")
                return self._software
            if self._unattested:
                self._unattested = False
                _log.warning("the TPM key is attested again: signing with it")
        return tpm

    def key_refused(self, reason: str) -> bool:
        """The ingest refused the TPM key (`key_not_attested`, `attestation_expired`).

        Signs with the software key for `hold_seconds` (then re-attests before the TPM
        signs again); True if that changed the signer, so a re-signature can fix it.
        """
        if self._tpm is None or self._monotonic() < self._software_until:
            return False
        self._software_until = self._monotonic() + self._hold_seconds
        if self._attestor is not None:
            self._attestor.invalidate()
        self._note_unattested(reason)
        return True

    def _note_unattested(self, reason: str) -> None:
        if self._unattested:
            return  # counted and logged once per spell
        self._unattested = True
        self._count(f"tpm_unattested:{reason}")
        _log.warning(
            "the TPM key is not attested (%s): signing with the software key, for the "
            "tiers the attestation policy accepts from it",
            reason,
        )

    def report_failure(self, store: KeyStore, exc: BaseException) -> None:
        """`store` failed to sign: if it is the TPM, stop using it (and close it)."""
        with self._lock:
            if store is not self._tpm or self._tpm is None:
                return
            tpm, self._tpm = self._tpm, None
        self._count(f"tpm_failed:{type(exc).__name__}")
        _log.warning("the TPM failed, signing with the software key from now on: %s", exc)
        close = getattr(tpm, "close", None)
        if callable(close):
            try:
                close()
            except Exception:  # a dead TPM may fail to close too; nothing to do about it
                _log.debug("closing the failed TPM store failed", exc_info=True)

    # --- the KeyStore seam, for callers that do not know about fallback ---------------

    @property
    def assurance(self) -> Literal["software", "tpm"]:
        """The assurance of the store that would sign now (no I/O)."""
        return self.current().assurance

    @property
    def device_id(self) -> str:
        """The device id of the store that would sign now (no I/O)."""
        return device_id_of(self.current())

    def public_key(self) -> bytes:
        """The public key of the store that would sign now (no I/O)."""
        return self.current().public_key()

    def sign(self, data: bytes) -> bytes:
        """Sign with the current store; a TPM failure switches to software and re-signs.

        Callers that stamp the key into what they sign must use `signing_store()`
        instead (the key may change under them here).
        """
        store = self.signing_store()
        try:
            return store.sign(data)
        except Exception as exc:
            if store is self._software:
                raise
            self.report_failure(store, exc)
            return self._software.sign(data)

    def close(self) -> None:
        """Close the TPM store if open."""
        with self._lock:
            tpm, self._tpm = self._tpm, None
        close = getattr(tpm, "close", None)
        if callable(close):
            close()

    def _count(self, reason: str) -> None:
        with self._lock:
            self.failures[reason] = self.failures.get(reason, 0) + 1
            if self._drops is not None:
                self._drops.add(reason)
