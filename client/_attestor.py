"""The device side of enrollment and attestation: `DeviceAttestor` talks to the ingest.

    attestor = DeviceAttestor(tpm_store, "https://ingest.example")
    attestor.ensure_attested()       # enrolls once, attests, re-attests before expiry

Enrollment (once per AK): POST /v1/enroll with the EK public area, EK certificate and
AK public area; the TPM answers the credential challenge (ActivateCredential) and
POST /v1/enroll/activate completes it. Attestation: POST /v1/attest/nonce, then a quote
over the PCRs the ingest names and a TPM2_Certify of the signing key over that nonce,
POST /v1/attest. The attestation lasts until the ingest's `expires_at`;
`ensure_attested` renews it once `renew_fraction` of its lifetime has passed.

`ensure_attested` never raises: it returns False and keeps `last_error` (the ingest's
reason code, or the transport or TPM error) and retries no sooner than `retry_seconds`.
`is_attested()` answers without I/O (for the host app's thread); `invalidate()` forgets
an attestation the ingest no longer honours (`key_not_attested`).
TPM failures are re-raised only by `enroll`/`attest`, so a `FallbackKeyStore` can
switch to software when the TPM dies.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import httpx
from pydantic import ValidationError

from client._errors import ClientError
from client._tpm_keystore import EnrollmentMaterial, KeyCertification, TpmQuote
from schemas import AttestationResult, EnrollmentChallenge, NonceGrant

__all__ = ["AttestationRefused", "AttestedDevice", "DeviceAttestor"]


class AttestedDevice(Protocol):
    """What the attestor needs from a TPM key store (`TpmKeyStore` has it)."""

    @property
    def device_id(self) -> str:
        """The EK-derived device id."""
        ...

    def public_key(self) -> bytes:
        """The signing key's uncompressed point."""
        ...

    def enrollment_material(self) -> EnrollmentMaterial:
        """EK public, EK certificate, AK public and name."""
        ...

    def activate_credential(self, credential_blob: bytes, secret: bytes) -> bytes:
        """The ActivateCredential answer."""
        ...

    def quote(self, nonce: bytes, pcr_selection: list[int]) -> TpmQuote:
        """A quote by the AK."""
        ...

    def certify_signing_key(self, nonce: bytes) -> KeyCertification:
        """A TPM2_Certify of the signing key by the AK."""
        ...

    def signing_public_area(self) -> bytes:
        """The signing key's TPM2B_PUBLIC."""
        ...


class AttestationRefused(ClientError):
    """The ingest refused enrollment or attestation; `reason` is its reason code."""

    def __init__(self, reason: str, detail: str, status_code: int) -> None:
        self.reason = reason
        self.status_code = status_code
        super().__init__(f"{reason}: {detail}")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class DeviceAttestor:
    """Enrolls a TPM device with the ingest and keeps its signing key attested."""

    def __init__(
        self,
        device: AttestedDevice,
        base_url: str,
        *,
        client: httpx.Client | None = None,
        timeout: float = 10.0,
        renew_fraction: float = 0.5,
        retry_seconds: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._device = device
        self._base = base_url.rstrip("/")
        self._owns_client = client is None
        self._client = client if client is not None else httpx.Client(timeout=timeout)
        self._renew_fraction = renew_fraction
        self._retry_seconds = retry_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._enrolled = False
        self._renew_at = 0.0
        self._retry_at = 0.0
        self.expires_at: float | None = None
        self.last_error: str | None = None

    def ensure_attested(self) -> bool:
        """Enroll and attest if needed; True if the key is attested now. Never raises."""
        now = self._clock()
        with self._lock:
            if self.expires_at is not None and now < self._renew_at:
                return True
            if now < self._retry_at:
                return self.expires_at is not None and now < self.expires_at
            try:
                self._attest_locked()
            except Exception as exc:  # never into the host app: remember and retry later
                self.last_error = getattr(exc, "reason", None) or repr(exc)
                self._retry_at = now + self._retry_seconds
                return self.expires_at is not None and now < self.expires_at
            return True

    def is_attested(self) -> bool:
        """Whether the last attestation is still current. No I/O, no lock: the host
        app's thread may ask while the worker attests."""
        expires = self.expires_at
        return expires is not None and self._clock() < expires

    def invalidate(self) -> None:
        """Forget the current attestation (the ingest refused the key): the next
        `ensure_attested` attests again, no sooner than `retry_seconds` after a failure."""
        self.expires_at = None
        self._renew_at = 0.0

    def enroll(self) -> str:
        """Enroll this TPM's EK and AK; returns the device id. Raises on refusal."""
        with self._lock:
            return self._enroll_locked()

    def attest(self) -> AttestationResult:
        """Attest the signing key now (enrolling first if needed). Raises on refusal."""
        with self._lock:
            return self._attest_locked()

    def close(self) -> None:
        """Close the HTTP client if this attestor created it."""
        if self._owns_client:
            self._client.close()

    # --- internals ------------------------------------------------------------------

    def _enroll_locked(self) -> str:
        material = self._device.enrollment_material()
        challenge = EnrollmentChallenge.model_validate(
            self._post(
                "/v1/enroll",
                {
                    "ek_public": _b64(material.ek_public),
                    "ek_certificate": _b64(material.ek_certificate),
                    "ak_public": _b64(material.ak_public),
                    "ak_name": _b64(material.ak_name),
                },
            )
        )
        proof = self._device.activate_credential(challenge.credential_blob, challenge.secret)
        self._post("/v1/enroll/activate", {"device_id": challenge.device_id, "proof": _b64(proof)})
        self._enrolled = True
        return challenge.device_id

    def _attest_locked(self) -> AttestationResult:
        device_id = self._device.device_id
        if not self._enrolled:
            self._enroll_locked()
        try:
            grant = self._nonce(device_id)
        except AttestationRefused as exc:
            if exc.reason not in {"device_unknown", "device_not_enrolled"}:
                raise
            # The ingest lost or never finished our enrollment: enroll again.
            self._enroll_locked()
            grant = self._nonce(device_id)
        quote = self._device.quote(grant.nonce, grant.pcr_selection)
        certification = self._device.certify_signing_key(grant.nonce)
        result = AttestationResult.model_validate(
            self._post(
                "/v1/attest",
                {
                    "device_id": device_id,
                    "nonce": _b64(grant.nonce),
                    "quote": {
                        "attest": _b64(quote.attest),
                        "signature": _b64(quote.signature),
                        "pcr_values": {str(i): _b64(v) for i, v in quote.pcr_values.items()},
                    },
                    "certify": {
                        "attest": _b64(certification.attest),
                        "signature": _b64(certification.signature),
                    },
                    "signing_public_area": _b64(self._device.signing_public_area()),
                    "signing_public_key": _b64(self._device.public_key()),
                },
            )
        )
        now = self._clock()
        expires = result.expires_at.timestamp()
        self.expires_at = expires
        self._renew_at = now + (expires - now) * self._renew_fraction
        self._retry_at = 0.0
        self.last_error = None
        return result

    def _nonce(self, device_id: str) -> NonceGrant:
        return NonceGrant.model_validate(self._post("/v1/attest/nonce", {"device_id": device_id}))

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        try:
            response = self._client.post(self._base + path, json=body)
        except httpx.HTTPError as exc:
            raise ClientError(f"POST {path} failed: {exc!r}") from exc
        if response.status_code >= 400:
            try:
                error = response.json()
                reason, detail = str(error["error"]), str(error.get("detail"))
            except (ValueError, KeyError, TypeError):
                reason, detail = f"http_{response.status_code}", response.text[:200]
            raise AttestationRefused(reason, detail, response.status_code)
        try:
            return response.json()
        except (ValueError, ValidationError) as exc:
            raise ClientError(f"POST {path}: the ingest's answer is not JSON") from exc
