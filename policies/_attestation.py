"""The attestation trust policy: which TPMs the ingest trusts and what it accepts.

    policy = load_attestation_policy("policies/attestation.yaml")
    policy.roots, policy.intermediates          # EK certificate trust (PEM files, loaded)
    policy.pcr_selection, policy.allowed_pcr_values()
    policy.attestation_lifetime, policy.nonce_lifetime   # seconds
    policy.accepts_software(Tier.CONTENT)                # per-tier software assurance

Certificate paths are relative to the policy file. Every certificate file is read and
parsed when the policy loads, so a missing or corrupt root fails at start-up with a
`PolicyError` naming the file, the key and the reason, not at the first enrollment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import yaml
from cryptography import x509
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from policies._errors import PolicyError, yaml_problem
from schemas import Tier

__all__ = [
    "DEFAULT_ATTESTATION_POLICY_PATH",
    "AttestationPolicy",
    "PcrRule",
    "load_attestation_policy",
]

DEFAULT_ATTESTATION_POLICY_PATH = Path(__file__).parent / "attestation.yaml"

_HEX32 = Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$")]
_PCR = Annotated[int, Field(ge=0, le=23)]


class PcrRule(BaseModel):
    """One PCR: the SHA-256 values it may hold, or `any` with the reason it is not pinned."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    allowed: list[_HEX32] | None = Field(default=None, min_length=1)
    any: Annotated[str, Field(min_length=3)] | None = Field(
        default=None, description="why this PCR is quoted but any value is accepted"
    )

    @model_validator(mode="after")
    def _one_of(self) -> PcrRule:
        if (self.allowed is None) == (self.any is None):
            raise ValueError("give exactly one of 'allowed' (hex values) or 'any' (a reason)")
        return self


class _Trust(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    roots: list[str] = Field(description="PEM files of the EK manufacturers' root CAs")
    intermediates: list[str] = Field(default_factory=list)


class _Lifetimes(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    attestation_seconds: int = Field(ge=60, le=30 * 86_400)
    nonce_seconds: int = Field(ge=1, le=3_600)
    enrollment_challenge_seconds: int = Field(default=300, ge=1, le=86_400)


class _File(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    version: int = Field(ge=1, le=1)
    trust: _Trust
    pcrs: dict[_PCR, PcrRule] = Field(min_length=1)
    lifetimes: _Lifetimes
    software_assurance: dict[Tier, bool]

    @model_validator(mode="after")
    def _every_tier(self) -> _File:
        missing = sorted(t.value for t in Tier if t not in self.software_assurance)
        if missing:
            raise ValueError(f"state for every tier whether software keys are accepted: {missing}")
        return self


class AttestationPolicy:
    """A loaded, validated attestation policy (immutable)."""

    __slots__ = (
        "attestation_lifetime",
        "challenge_lifetime",
        "intermediates",
        "nonce_lifetime",
        "path",
        "pcr_rules",
        "pcr_selection",
        "roots",
        "software_tiers",
    )

    def __init__(
        self,
        *,
        path: Path,
        roots: tuple[x509.Certificate, ...],
        intermediates: tuple[x509.Certificate, ...],
        pcr_rules: dict[int, PcrRule],
        attestation_lifetime: int,
        nonce_lifetime: int,
        challenge_lifetime: int,
        software_tiers: frozenset[Tier],
    ) -> None:
        self.path = path
        self.roots = roots
        self.intermediates = intermediates
        self.pcr_rules = dict(sorted(pcr_rules.items()))
        self.pcr_selection: tuple[int, ...] = tuple(self.pcr_rules)
        self.attestation_lifetime = attestation_lifetime
        self.nonce_lifetime = nonce_lifetime
        self.challenge_lifetime = challenge_lifetime
        self.software_tiers = software_tiers

    def allowed_pcr_values(self) -> dict[int, frozenset[bytes]]:
        """PCR index to its allowed raw values, for the pinned PCRs only."""
        return {
            index: frozenset(bytes.fromhex(v) for v in rule.allowed)
            for index, rule in self.pcr_rules.items()
            if rule.allowed is not None
        }

    def accepts_software(self, tier: Tier | str) -> bool:
        """Whether envelopes of `tier` may be signed by a software (non-TPM) key."""
        return Tier(tier) in self.software_tiers


def load_attestation_policy(
    path: Path | str = DEFAULT_ATTESTATION_POLICY_PATH,
    *,
    overrides: dict[str, Any] | None = None,
) -> AttestationPolicy:
    """Load and validate an attestation policy; `PolicyError(file, key, reason)` if bad.

    `overrides` replaces top-level keys of the file (tests point `trust` at a
    temporary CA this way); relative paths stay relative to the file.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PolicyError(path, "", f"cannot read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise PolicyError(path, "", f"not UTF-8 text: {exc.reason}") from exc
    except yaml.YAMLError as exc:
        raise PolicyError(path, "", yaml_problem(exc)) from exc
    if not isinstance(data, dict):
        raise PolicyError(path, "", "top level must be a mapping")
    data = {**data, **(overrides or {})}
    try:
        model = _File.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise PolicyError(path, key, str(first["msg"]).removeprefix("Value error, ")) from exc
    base = path.parent
    return AttestationPolicy(
        path=path,
        roots=_certificates(path, base, "trust.roots", model.trust.roots),
        intermediates=_certificates(path, base, "trust.intermediates", model.trust.intermediates),
        pcr_rules=dict(model.pcrs),
        attestation_lifetime=model.lifetimes.attestation_seconds,
        nonce_lifetime=model.lifetimes.nonce_seconds,
        challenge_lifetime=model.lifetimes.enrollment_challenge_seconds,
        software_tiers=frozenset(t for t, ok in model.software_assurance.items() if ok),
    )


def _certificates(
    policy_path: Path, base: Path, key: str, files: list[str]
) -> tuple[x509.Certificate, ...]:
    out: list[x509.Certificate] = []
    for i, name in enumerate(files):
        cert_path = base / name
        try:
            out.extend(x509.load_pem_x509_certificates(cert_path.read_bytes()))
        except OSError as exc:
            raise PolicyError(
                policy_path, f"{key}.{i}", f"cannot read {cert_path}: {exc.strerror or exc}"
            ) from exc
        except ValueError as exc:
            raise PolicyError(
                policy_path, f"{key}.{i}", f"{cert_path} holds no valid PEM certificate"
            ) from exc
    return tuple(out)
