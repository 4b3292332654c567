"""A TPM key store that falls back to a software key, and the signing identity of a store.

`FallbackKeyStore` opens the TPM through a factory; if the TPM is absent, or any TPM
call fails later (the chip is reset, swtpm dies, the resource manager refuses), it
switches to its `SoftwareKeyStore` for the rest of the process and counts why. It never
raises into the host app: the sealer asks it for the store to sign with
(`signing_store()`), and on a failure reports it (`report_failure`) and signs again
with the software key. Envelopes signed in software are labelled `software` assurance
by the ingest, which refuses them for tiers whose policy requires a TPM: such tiers are
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

    def ensure_attested(self) -> bool:
        """Attest if due; never raises."""
        ...


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
        return "tpm" if store.tpm is not None else "software"
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
    ) -> None:
        self._software = software
        self._lock = threading.Lock()
        self.tpm_only_tiers = frozenset(str(t) for t in tpm_only_tiers)
        self.failures: dict[str, int] = {}
        self._attestor: Attestor | None = None
        self._tpm: KeyStore | None = None
        try:
            self._tpm = open_tpm()
        except Exception as exc:  # any TPM trouble means: no TPM, use the software key
            self._count(f"tpm_unavailable:{type(exc).__name__}")
            _log.warning("no usable TPM, signing with the software key: %s", exc)

    @property
    def tpm(self) -> KeyStore | None:
        """The TPM store while it is in use, else None (absent or failed)."""
        return self._tpm

    def attach_attestor(self, attestor: Attestor) -> None:
        """Re-attest (when due) before each TPM signature: on the sending thread."""
        self._attestor = attestor

    def signing_store(self) -> KeyStore:
        """The store to sign the next envelope with (re-attesting first when due)."""
        tpm = self._tpm
        if tpm is None:
            return self._software
        if self._attestor is not None:
            self._attestor.ensure_attested()
        return tpm

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
        """The assurance of the store currently signing."""
        return self.signing_store().assurance

    @property
    def device_id(self) -> str:
        """The device id of the store currently signing."""
        return device_id_of(self.signing_store())

    def public_key(self) -> bytes:
        """The public key of the store currently signing."""
        return self.signing_store().public_key()

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
