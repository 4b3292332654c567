"""Sign an envelope and seal it to the ingest's key: one item of `EnvelopeBatch`.

item = base64(SealedBox(ingest_public_key).encrypt(SignedEnvelope JSON)), where the
SignedEnvelope carries the envelope's exact JSON bytes and a signature over them:
Ed25519 by a software key, or ECDSA P-256 (`ecdsa-p256`) by a TPM key. The ingest opens
the box, verifies the signature, then parses the payload.

The envelope's `device_id` is stamped here, from the store that signs: with a
`FallbackKeyStore` the signer can change between building an envelope and sending it
(the TPM failed), and the id must be the signer's. A software signer drops the
aggregates of tiers that need a TPM (counted `tier_requires_tpm`, once per signal):
`Telemetry` never releases such tiers while it signs in software, so this only catches
envelopes released while the TPM still worked (or spooled before a restart without it).
"""

from __future__ import annotations

import base64
from collections.abc import Iterable

from nacl.public import PublicKey, SealedBox

from client._drops import DropCounter, DropReason
from client._errors import ConfigError, KeyStoreError
from client._keys import KeyStore
from client._keystore_fallback import FallbackKeyStore, device_id_of, signed_fields
from schemas import EnvelopeV1, SignedEnvelope, Tier

__all__ = ["TIER_REQUIRES_TPM", "EnvelopeSealer"]

TIER_REQUIRES_TPM = DropReason.TIER_REQUIRES_TPM.value
"""Drop reason: a release not sent because its tier needs a TPM and the key is software."""


class EnvelopeSealer:
    """Turns envelopes into sealed batch items for one ingest key.

    `software_tiers`: the tiers a software signature may carry (the attestation
    policy's); None means every tier, apart from a `FallbackKeyStore`'s
    `tpm_only_tiers`.
    """

    def __init__(
        self,
        key_store: KeyStore,
        ingest_public_key: bytes,
        drops: DropCounter | None = None,
        *,
        software_tiers: Iterable[Tier] | None = None,
    ) -> None:
        if len(ingest_public_key) != PublicKey.SIZE:
            raise ConfigError(
                f"ingest_public_key must be {PublicKey.SIZE} raw bytes (X25519), "
                f"got {len(ingest_public_key)}"
            )
        self._key_store = key_store
        self._drops = drops
        refused: set[str] = set()
        if software_tiers is not None:
            allowed = {Tier(t) for t in software_tiers}
            refused = {t.value for t in Tier if t not in allowed}
        if isinstance(key_store, FallbackKeyStore):
            refused |= key_store.tpm_only_tiers
        self._tpm_only = frozenset(refused)
        self._box = SealedBox(PublicKey(ingest_public_key))

    def withhold_from_software(self, tiers: Iterable[Tier]) -> bool:
        """Strip `tiers` from what a software key signs from now on (the ingest said
        it refuses them from software keys); True if any was new."""
        new = {Tier(t).value for t in tiers} - self._tpm_only
        self._tpm_only = self._tpm_only | new
        return bool(new)

    def seal(self, envelope: EnvelopeV1) -> str:
        """The base64 (standard, padded) sealed form of `envelope`.

        Raises `KeyStoreError` if nothing of it may be sent with the available key.
        """
        fallback = self._key_store if isinstance(self._key_store, FallbackKeyStore) else None
        store = fallback.signing_store() if fallback is not None else self._key_store
        try:
            return self._seal_with(store, envelope)
        except Exception as exc:
            if fallback is None or store.assurance != "tpm":
                raise
            # The TPM failed mid-run: carry on with the software key.
            fallback.report_failure(store, exc)
            return self._seal_with(fallback.signing_store(), envelope)

    def _seal_with(self, store: KeyStore, envelope: EnvelopeV1) -> str:
        update: dict[str, object] = {}
        device_id = device_id_of(store)
        if envelope.device_id != device_id:
            update["device_id"] = device_id
        if self._tpm_only and store.assurance != "tpm":
            kept = [a for a in envelope.aggregates if a.tier.value not in self._tpm_only]
            reports = [r for r in envelope.reports if r.tier.value not in self._tpm_only]
            if len(kept) != len(envelope.aggregates) or len(reports) != len(envelope.reports):
                if self._drops is not None:
                    withheld = {a.signal for a in envelope.aggregates} - {a.signal for a in kept}
                    withheld |= {r.task for r in envelope.reports} - {r.task for r in reports}
                    self._drops.add(TIER_REQUIRES_TPM, len(withheld))
                if not kept and not reports:
                    raise KeyStoreError("every aggregate needs a TPM key, and the TPM is gone")
                update["aggregates"] = kept
                update["reports"] = reports
        if update:
            envelope = envelope.model_copy(update=update)
        signed = SignedEnvelope(**signed_fields(store, envelope.model_dump_json().encode()))
        sealed = self._box.encrypt(signed.model_dump_json().encode())
        return base64.b64encode(sealed).decode("ascii")
