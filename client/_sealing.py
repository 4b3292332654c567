"""Sign an envelope and seal it to the ingest's key: one item of `EnvelopeBatch`.

item = base64(SealedBox(ingest_public_key).encrypt(SignedEnvelope JSON)), where the
SignedEnvelope carries the envelope's exact JSON bytes and an Ed25519 signature over
them. The ingest opens the box, verifies the signature, then parses the payload.
"""

from __future__ import annotations

import base64

from nacl.public import PublicKey, SealedBox

from client._errors import ConfigError
from client._keys import KeyStore
from schemas import EnvelopeV1, SignedEnvelope

__all__ = ["EnvelopeSealer"]


class EnvelopeSealer:
    """Turns envelopes into sealed batch items for one ingest key."""

    def __init__(self, key_store: KeyStore, ingest_public_key: bytes) -> None:
        if len(ingest_public_key) != PublicKey.SIZE:
            raise ConfigError(
                f"ingest_public_key must be {PublicKey.SIZE} raw bytes (X25519), "
                f"got {len(ingest_public_key)}"
            )
        self._key_store = key_store
        self._box = SealedBox(PublicKey(ingest_public_key))

    def seal(self, envelope: EnvelopeV1) -> str:
        """The base64 (standard, padded) sealed form of `envelope`."""
        payload = envelope.model_dump_json().encode()
        # pydantic's Base64Bytes decodes its *input* as base64, so the raw bytes are
        # passed encoded; the model then holds (and serializes) the raw bytes.
        signed = SignedEnvelope(
            public_key=base64.b64encode(self._key_store.public_key()),
            payload=base64.b64encode(payload),
            signature=base64.b64encode(self._key_store.sign(payload)),
        )
        sealed = self._box.encrypt(signed.model_dump_json().encode())
        return base64.b64encode(sealed).decode("ascii")
