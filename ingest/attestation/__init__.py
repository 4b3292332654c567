"""TPM enrollment and attestation checks for the ingest: pure functions on evidence.

No I/O and no HTTP here; the enrollment and attestation endpoints call these.

Enrollment (the Keylime registrar's flow):

    ek = verify_ek_certificate(anchors, ek_cert_der, ek_public)     # unknown_ek_root
    check_ak_public(ak_public, ak_name)                             # ak_not_restricted
    challenge = make_challenge(ek, ak_name)   # send credential_blob + secret, keep it
    check_activation(challenge, proof)                              # bad_activation_proof

Attestation, on a nonce from `NonceStore.issue(device_id)`:

    nonces.consume(device_id, nonce)                     # nonce_reused / nonce_expired
    clock = verify_quote(ak_public, attest, sig, pcrs, nonce=nonce, policy=pcr_policy,
                         last_clock=previous)           # quote_bad_signature, pcr_not_allowed,
                                                        # clock_went_back, ...
    verify_key_certification(ak_public, attest, sig, nonce=nonce,
                             signing_public_area=area, presented_key=point)
                                                        # signing_key_exportable / _restricted

Every refusal is an `AttestationError` (an ingest `RequestRejected`) whose `reason` is
an `AttestationReason`.
"""

from ingest.attestation._certify import verify_key_certification
from ingest.attestation._credential import (
    CredentialChallenge,
    check_activation,
    check_ak_public,
    make_challenge,
)
from ingest.attestation._ek import EkTrustAnchors, verify_ek_certificate
from ingest.attestation._errors import AttestationError, AttestationReason
from ingest.attestation._nonces import NonceStore
from ingest.attestation._quote import PcrPolicy, TpmClock, verify_quote

__all__ = [
    "AttestationError",
    "AttestationReason",
    "CredentialChallenge",
    "EkTrustAnchors",
    "NonceStore",
    "PcrPolicy",
    "TpmClock",
    "check_activation",
    "check_ak_public",
    "make_challenge",
    "verify_ek_certificate",
    "verify_key_certification",
    "verify_quote",
]
