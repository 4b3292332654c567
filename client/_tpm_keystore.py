"""The device key store backed by a TPM 2.0, through tpm2-pytss.

Three keys, in the layout the attestation flow needs (see docs/tpm.md):

- the **EK** (endorsement key): the RSA 2048 EK whose certificate the manufacturer put in
  NV index 0x01c00002, built from the TCG EK Credential Profile template (or the template
  in NV 0x01c00003 if the manufacturer stored one). The persistent copy at 0x81010001 is
  used when it matches the certificate; otherwise it is created as a transient primary;
- the **AK** (attestation key): a restricted ECC P-256 ECDSA-SHA256 signing key, so it
  only signs TPM-generated structures (quotes, certifications);
- the **signing key**: a non-restricted ECC P-256 ECDSA-SHA256 key with fixedTPM,
  fixedParent, sensitiveDataOrigin, userWithAuth and sign: it signs envelopes and can
  never leave this TPM.

Persistence: the AK and the signing key are children of a storage primary key (the TCG
provisioning guidance's ECC P-256 SRK template) in the endorsement hierarchy, so quotes
carry the TPM's reset and restart counters in clear (see `create_storage_parent`). Their
public areas and TPM-encrypted private blobs are saved in `state_dir` (`ak.pub`,
`ak.priv`, `signing.pub`, `signing.priv`, mode 0600); the parent is re-derived with
CreatePrimary (deterministic for a given TPM, hierarchy seed and template). No NV or
persistent handle is consumed and no owner authorization is needed; the blobs are useless
on another TPM, and a TPM2_ChangeEPS (which also replaces the EK) invalidates them.
While the store is open only the signing key stays loaded; every other object and
session is flushed after use, because a TPM has only a few transient slots.

All TPM errors are converted to `TpmError` (`TpmUnavailable` when the TPM cannot be
reached or lacks an EK certificate); both are `client.KeyStoreError`s.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, NamedTuple, Self

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from tpm2_pytss import ESAPI
from tpm2_pytss.constants import (
    ESYS_TR,
    TPM2_ALG,
    TPM2_CAP,
    TPM2_SE,
    TPMA_OBJECT,
)
from tpm2_pytss.TSS2_Exception import TSS2_Exception
from tpm2_pytss.types import (
    TPM2B_ENCRYPTED_SECRET,
    TPM2B_ID_OBJECT,
    TPM2B_PRIVATE,
    TPM2B_PUBLIC,
    TPML_PCR_SELECTION,
    TPMT_PUBLIC,
    TPMT_SIG_SCHEME,
    TPMT_SYM_DEF,
)
from tpm2_pytss.utils import NoSuchIndex, create_ek_template

from client._errors import KeyStoreError
from schemas import tpm_device_id_for

__all__ = [
    "AK_ATTRIBUTES",
    "EK_CERT_INDEX_RSA2048",
    "SIGNING_KEY_ATTRIBUTES",
    "EnrollmentMaterial",
    "KeyCertification",
    "TpmError",
    "TpmKeyStore",
    "TpmQuote",
    "TpmUnavailable",
]

EK_CERT_INDEX_RSA2048: Final = 0x01C00002
"""NV index of the RSA 2048 EK certificate (TCG EK Credential Profile, low range)."""
_EK_PERSISTENT_RSA: Final = 0x81010001
_NV_INDEX_FIRST: Final = 0x01000000
_PERSISTENT_FIRST: Final = 0x81000000

AK_ATTRIBUTES: Final = (
    TPMA_OBJECT.FIXEDTPM
    | TPMA_OBJECT.FIXEDPARENT
    | TPMA_OBJECT.SENSITIVEDATAORIGIN
    | TPMA_OBJECT.USERWITHAUTH
    | TPMA_OBJECT.RESTRICTED
    | TPMA_OBJECT.SIGN_ENCRYPT
)
"""A restricted signing key: it signs only TPM-made structures such as quotes."""

SIGNING_KEY_ATTRIBUTES: Final = (
    TPMA_OBJECT.FIXEDTPM
    | TPMA_OBJECT.FIXEDPARENT
    | TPMA_OBJECT.SENSITIVEDATAORIGIN
    | TPMA_OBJECT.USERWITHAUTH
    | TPMA_OBJECT.SIGN_ENCRYPT
)
"""Non-restricted (signs any digest), non-exportable, generated inside the TPM."""

_SRK_ATTRIBUTES: Final = (
    TPMA_OBJECT.FIXEDTPM
    | TPMA_OBJECT.FIXEDPARENT
    | TPMA_OBJECT.SENSITIVEDATAORIGIN
    | TPMA_OBJECT.USERWITHAUTH
    | TPMA_OBJECT.NODA
    | TPMA_OBJECT.RESTRICTED
    | TPMA_OBJECT.DECRYPT
)
_PCR_READ_ATTEMPTS: Final = 3


class TpmError(KeyStoreError):
    """A TPM operation failed; the message names the operation and the TSS error."""


class TpmUnavailable(TpmError):
    """No usable TPM: it cannot be reached, or it has no EK certificate."""


@dataclass(frozen=True)
class EnrollmentMaterial:
    """What a device sends to enroll: its EK (with certificate) and its AK."""

    ek_public: bytes
    """The EK's TPM2B_PUBLIC, marshalled."""
    ek_certificate: bytes
    """The EK certificate, DER, as read from NV."""
    ak_public: bytes
    """The AK's TPM2B_PUBLIC, marshalled."""
    ak_name: bytes
    """The AK's TPM name (nameAlg || digest of its public area), which a challenge binds."""


class TpmQuote(NamedTuple):
    """A TPM2_Quote by the AK and the PCR values it covers (SHA-256 bank)."""

    attest: bytes
    """TPMS_ATTEST, marshalled (the contents of the TPM2B_ATTEST)."""
    signature: bytes
    """TPMT_SIGNATURE by the AK, marshalled."""
    pcr_values: dict[int, bytes]
    """PCR index to its SHA-256 bank value, read right after the quote."""


class KeyCertification(NamedTuple):
    """A TPM2_Certify of the signing key by the AK."""

    attest: bytes
    """TPMS_ATTEST, marshalled; its certified name is the signing key's name."""
    signature: bytes
    """TPMT_SIGNATURE by the AK, marshalled."""


def _ecc_template(attributes: TPMA_OBJECT, alg: str) -> TPM2B_PUBLIC:
    return TPM2B_PUBLIC(publicArea=TPMT_PUBLIC.parse(alg, objectAttributes=attributes))


def srk_template() -> TPM2B_PUBLIC:
    """A storage primary: ECC P-256 with AES-128-CFB (TCG provisioning guidance's SRK)."""
    return _ecc_template(_SRK_ATTRIBUTES, "ecc256:aes128cfb")


def create_storage_parent(ectx: ESAPI) -> Any:
    """Load the parent of the AK and signing key (transient: the caller flushes it).

    An SRK-template primary in the *endorsement* hierarchy: the TPM obfuscates a quote's
    resetCount and restartCount when the signer is outside the endorsement and platform
    hierarchies, and the verifier needs them in clear to see a TPM's clock go back.
    """
    handle, _, _, _, _ = ectx.create_primary(
        None, srk_template(), primary_handle=ESYS_TR.ENDORSEMENT
    )
    return handle


def ak_template() -> TPM2B_PUBLIC:
    """The attestation key: restricted ECC P-256 ECDSA-SHA256."""
    return _ecc_template(AK_ATTRIBUTES, "ecc256:ecdsa-sha256:null")


def signing_key_template() -> TPM2B_PUBLIC:
    """The envelope signing key: non-restricted, non-exportable ECC P-256 ECDSA-SHA256."""
    return _ecc_template(SIGNING_KEY_ATTRIBUTES, "ecc256:ecdsa-sha256:null")


def ecdsa_der(signature: Any) -> bytes:
    """A TPMT_SIGNATURE (ECDSA) as the DER signature `cryptography` verifies."""
    r = int.from_bytes(bytes(signature.signature.ecdsa.signatureR), "big")
    s = int.from_bytes(bytes(signature.signature.ecdsa.signatureS), "big")
    return bytes(encode_dss_signature(r, s))


class _NvReader:
    """NV read callback for `create_ek_template` that checks an index exists first.

    tpm2-pytss's own reader probes with a failing command, which the TSS logs to stderr;
    a library embedded in someone's app must not write there on a normal path.
    """

    def __init__(self, ectx: ESAPI) -> None:
        self._ectx = ectx
        self._defined = set(_handles(ectx, _NV_INDEX_FIRST))

    def __call__(self, index: int) -> bytes:
        if int(index) not in self._defined:
            raise NoSuchIndex(index)
        handle = self._ectx.tr_from_tpmpublic(index)
        try:
            nv_public, _ = self._ectx.nv_read_public(handle)
            size = int(nv_public.nvPublic.dataSize)
            data = b""
            # 512 bytes is below every TPM's NV_BUFFER_MAX, so no capability lookup.
            while len(data) < size:
                chunk = min(512, size - len(data))
                data += bytes(self._ectx.nv_read(handle, chunk, len(data), auth_handle=handle))
            return data
        finally:
            self._ectx.tr_close(handle)


def _handles(ectx: ESAPI, first: int) -> list[int]:
    found: list[int] = []
    more = True
    start = first
    while more:
        more, data = ectx.get_capability(TPM2_CAP.HANDLES, start, 64)
        batch = [int(h) for h in data.data.handles]
        # The capability walks past the requested range; keep only this range's handles.
        found.extend(h for h in batch if h >> 24 == first >> 24)
        if not batch or batch[-1] >> 24 != first >> 24:
            break
        start = batch[-1] + 1
    return found


class TpmKeyStore:
    """Device keys in a TPM: EK, AK and a non-exportable P-256 envelope signing key.

    `tcti` is a TCTI string such as ``"device:/dev/tpmrm0"`` or
    ``"swtpm:host=127.0.0.1,port=2321"``. Opening reads the EK certificate and creates
    the AK and signing key on first use (saved in `state_dir`). The store holds one TPM
    connection until `close()`; its methods are thread-safe (one lock, since an ESAPI
    context is not).
    """

    assurance: Literal["tpm"] = "tpm"

    def __init__(self, tcti: str, state_dir: Path | str) -> None:
        self._state_dir = Path(state_dir)
        self._lock = threading.Lock()
        try:
            self._ectx: ESAPI | None = ESAPI(tcti)
        except TSS2_Exception as exc:
            raise TpmUnavailable(f"cannot connect to the TPM at {tcti!r}: {exc}") from exc
        try:
            self._state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            with self._tpm("read the EK certificate") as ectx:
                self._ek_certificate, self._ek_template = self._read_ek(ectx)
                self._ek_modulus = _rsa_modulus_of_cert(self._ek_certificate)
                self._ak_public, self._ak_private = self._key_blobs(ectx, "ak", ak_template())
                self._signing_public, signing_private = self._key_blobs(
                    ectx, "signing", signing_key_template()
                )
                self._signing_handle = self._load(ectx, self._signing_public, signing_private)
        except BaseException:
            self.close()
            raise
        point = self._signing_public.publicArea.unique.ecc
        self._public_key = b"\x04" + bytes(point.x) + bytes(point.y)
        ek_spki = (
            x509.load_der_x509_certificate(self._ek_certificate)
            .public_key()
            .public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        self._device_id = tpm_device_id_for(ek_spki)

    # --- the key store seam ---------------------------------------------------------

    @property
    def device_id(self) -> str:
        """The device's id, named after its EK (`schemas.tpm_device_id_for`), as the
        ingest's enrollment names it: stable across signing keys and client resets."""
        return self._device_id

    def public_key(self) -> bytes:
        """The signing key's public point, uncompressed SEC1 (65 bytes: 0x04 || X || Y).

        Load it with ``EllipticCurvePublicKey.from_encoded_point(SECP256R1(), ...)``.
        """
        return self._public_key

    def sign(self, data: bytes) -> bytes:
        """ECDSA P-256 SHA-256 over `data` by the TPM, as a DER signature."""
        digest = hashlib.sha256(data).digest()
        with self._tpm("sign") as ectx:
            signature = ectx.sign(
                self._signing_handle, digest, TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL)
            )
        return ecdsa_der(signature)

    # --- attestation ----------------------------------------------------------------

    def enrollment_material(self) -> EnrollmentMaterial:
        """The EK public area and certificate and the AK public area and name."""
        with self._tpm("read the EK") as ectx, self._ek(ectx) as (_, ek_public):
            ek_bytes = bytes(ek_public.marshal())
        return EnrollmentMaterial(
            ek_public=ek_bytes,
            ek_certificate=self._ek_certificate,
            ak_public=bytes(self._ak_public.marshal()),
            ak_name=bytes(self._ak_public.get_name()),
        )

    def signing_public_area(self) -> bytes:
        """The signing key's TPM2B_PUBLIC, marshalled: the object a certification names."""
        return bytes(self._signing_public.marshal())

    def activate_credential(self, credential_blob: bytes, secret: bytes) -> bytes:
        """Answer an enrollment challenge: decrypt the credential bound to this AK and EK.

        `credential_blob` is a marshalled TPM2B_ID_OBJECT and `secret` a marshalled
        TPM2B_ENCRYPTED_SECRET, as MakeCredential produced them.
        """
        try:
            blob, _ = TPM2B_ID_OBJECT.unmarshal(credential_blob)
            seed, _ = TPM2B_ENCRYPTED_SECRET.unmarshal(secret)
        except Exception as exc:  # tpm2-pytss raises several types for short buffers
            raise TpmError(f"malformed credential challenge: {exc}") from exc
        with (
            self._tpm("activate the credential") as ectx,
            self._ek(ectx) as (ek, _),
            self._loaded(ectx, self._ak_public, self._ak_private) as ak,
            self._endorsement_policy(ectx) as policy,
        ):
            # The AK is authorized with its (empty) auth value; the EK only through
            # PolicySecret(endorsement), per the EK template's authPolicy.
            cert_info = ectx.activate_credential(
                ak, ek, blob, seed, session1=ESYS_TR.PASSWORD, session2=policy
            )
        return bytes(cert_info)

    def quote(self, nonce: bytes, pcr_selection: Sequence[int]) -> TpmQuote:
        """Quote the SHA-256 PCRs in `pcr_selection` with the AK over `nonce`."""
        indices = sorted(set(pcr_selection))
        if not indices or any(not 0 <= i < 24 for i in indices):
            raise TpmError(f"PCR selection must be indices 0..23, got {list(pcr_selection)}")
        selection = TPML_PCR_SELECTION.parse("sha256:" + ",".join(map(str, indices)))
        with self._tpm("quote") as ectx:
            for _ in range(_PCR_READ_ATTEMPTS):
                before = self._read_pcrs(ectx, indices)
                with self._loaded(ectx, self._ak_public, self._ak_private) as ak:
                    attest, signature = ectx.quote(ak, selection, nonce)
                # A PCR extended between the read and the quote would make the values
                # disagree with the quoted digest; read again and retry if so.
                if self._read_pcrs(ectx, indices) == before:
                    return TpmQuote(bytes(attest), bytes(signature.marshal()), before)
        raise TpmError(f"PCRs kept changing during {_PCR_READ_ATTEMPTS} quote attempts")

    def certify_signing_key(self, nonce: bytes) -> KeyCertification:
        """TPM2_Certify of the signing key by the AK over `nonce`."""
        with (
            self._tpm("certify the signing key") as ectx,
            self._loaded(ectx, self._ak_public, self._ak_private) as ak,
        ):
            attest, signature = ectx.certify(
                self._signing_handle, ak, nonce, TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL)
            )
        return KeyCertification(bytes(attest), bytes(signature.marshal()))

    # --- lifecycle ------------------------------------------------------------------

    def close(self) -> None:
        """Flush the signing key and close the TPM connection; safe to call twice."""
        with self._lock:
            ectx, self._ectx = self._ectx, None
            if ectx is None:
                return
            handle = getattr(self, "_signing_handle", None)
            if handle is not None:
                with contextlib.suppress(TSS2_Exception):
                    ectx.flush_context(handle)
            ectx.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- internals ------------------------------------------------------------------

    @contextlib.contextmanager
    def _tpm(self, operation: str) -> Iterator[ESAPI]:
        """The connection, under the lock, with TSS errors converted to `TpmError`."""
        with self._lock:
            if self._ectx is None:
                raise TpmUnavailable(f"cannot {operation}: the key store is closed")
            try:
                yield self._ectx
            except TSS2_Exception as exc:
                raise TpmError(f"cannot {operation}: {exc}") from exc

    @staticmethod
    def _read_ek(ectx: ESAPI) -> tuple[bytes, Any]:
        cert, template = create_ek_template("EK-RSA2048", _NvReader(ectx))
        if cert is None:
            raise TpmUnavailable(
                f"the TPM has no RSA EK certificate in NV 0x{EK_CERT_INDEX_RSA2048:08x}"
            )
        return bytes(cert), template

    @contextlib.contextmanager
    def _ek(self, ectx: ESAPI) -> Iterator[tuple[Any, Any]]:
        """The EK handle and public area: the persistent EK if it is the certified one,
        else a transient primary from the EK template (flushed on exit)."""
        if _EK_PERSISTENT_RSA in _handles(ectx, _PERSISTENT_FIRST):
            handle = ectx.tr_from_tpmpublic(_EK_PERSISTENT_RSA)
            public, _, _ = ectx.read_public(handle)
            if bytes(public.publicArea.unique.rsa) == self._ek_modulus:
                try:
                    yield handle, public
                finally:
                    ectx.tr_close(handle)
                return
            ectx.tr_close(handle)
        handle, public, _, _, _ = ectx.create_primary(
            None, self._ek_template, primary_handle=ESYS_TR.ENDORSEMENT
        )
        try:
            yield handle, public
        finally:
            ectx.flush_context(handle)

    @contextlib.contextmanager
    def _endorsement_policy(self, ectx: ESAPI) -> Iterator[Any]:
        session = ectx.start_auth_session(
            tpm_key=ESYS_TR.NONE,
            bind=ESYS_TR.NONE,
            session_type=TPM2_SE.POLICY,
            symmetric=TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL),
            auth_hash=TPM2_ALG.SHA256,
        )
        try:
            ectx.policy_secret(ESYS_TR.ENDORSEMENT, session)
            yield session
        finally:
            ectx.flush_context(session)

    @contextlib.contextmanager
    def _loaded(self, ectx: ESAPI, public: Any, private: Any) -> Iterator[Any]:
        handle = self._load(ectx, public, private)
        try:
            yield handle
        finally:
            ectx.flush_context(handle)

    @staticmethod
    def _load(ectx: ESAPI, public: Any, private: Any) -> Any:
        srk = create_storage_parent(ectx)
        try:
            return ectx.load(srk, private, public)
        finally:
            # A loaded child outlives its parent's flush, and the SRK would hold a slot.
            ectx.flush_context(srk)

    def _key_blobs(self, ectx: ESAPI, name: str, template: TPM2B_PUBLIC) -> tuple[Any, Any]:
        """The saved public and private blobs of `name`, created in the TPM if absent."""
        pub_path = self._state_dir / f"{name}.pub"
        priv_path = self._state_dir / f"{name}.priv"
        if pub_path.exists() and priv_path.exists():
            try:
                public, _ = TPM2B_PUBLIC.unmarshal(pub_path.read_bytes())
                private, _ = TPM2B_PRIVATE.unmarshal(priv_path.read_bytes())
            except Exception as exc:  # tpm2-pytss raises several types for bad buffers
                raise TpmError(f"the saved {name} key in {self._state_dir} is corrupt") from exc
            return public, private
        srk = create_storage_parent(ectx)
        try:
            private, public, _, _, _ = ectx.create(srk, None, template)
        finally:
            ectx.flush_context(srk)
        _write_private(priv_path, bytes(private.marshal()))
        _write_private(pub_path, bytes(public.marshal()))
        return public, private

    @staticmethod
    def _read_pcrs(ectx: ESAPI, indices: list[int]) -> dict[int, bytes]:
        values: dict[int, bytes] = {}
        # PCR_Read returns at most 8 digests per call.
        for start in range(0, len(indices), 8):
            chunk = indices[start : start + 8]
            _, _, digests = ectx.pcr_read(
                TPML_PCR_SELECTION.parse("sha256:" + ",".join(map(str, chunk)))
            )
            values.update(zip(chunk, (bytes(d) for d in digests), strict=True))
        return values


def _rsa_modulus_of_cert(cert_der: bytes) -> bytes:
    try:
        key = x509.load_der_x509_certificate(cert_der).public_key()
    except ValueError as exc:
        raise TpmUnavailable(f"the TPM's EK certificate is not valid DER: {exc}") from exc
    if not isinstance(key, rsa.RSAPublicKey):
        raise TpmUnavailable("the TPM's RSA EK certificate does not hold an RSA key")
    n = key.public_numbers().n
    return n.to_bytes((n.bit_length() + 7) // 8, "big")


def _write_private(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically, readable only by this user."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
