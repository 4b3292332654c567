"""Settings of the helper service (`QUIETWIRE_HELPER_*`) and of the leader's
aggregation job (`QUIETWIRE_LEADER_*`).

Both aggregators share the VDAF verify key (32 bytes, hex or base64). Development may
leave it unset: both sides then use a published development key, which keeps `python
-m ingest helper` and `python -m ingest aggregate` runnable with nothing configured and
gives no privacy at all. Production refuses that, an unauthenticated helper, and a
generated helper key.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta
from pathlib import Path
from typing import Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ingest._settings import check_directory
from ingest.aggregation._vdaf import parse_verify_key
from policies import DEFAULT_POLICY_PATH

__all__ = ["DEVELOPMENT_VERIFY_KEY", "HelperSettings", "LeaderSettings"]

DEVELOPMENT_VERIFY_KEY = hashlib.sha256(
    b"quietwire development verify key; never in production"
).digest()
"""The verify key of an unconfigured development setup: public, so no secret at all."""

_VERIFY_KEY_DOC = (
    "the VDAF verify key shared by leader and helper: 32 bytes, 64 hex digits or base64; "
    "unset in development only (a published development key)"
)


def _check_verify_key(value: SecretStr | None) -> SecretStr | None:
    if value is not None:
        parse_verify_key(value.get_secret_value())
    return value


def _resolve_verify_key(value: SecretStr | None) -> bytes:
    return DEVELOPMENT_VERIFY_KEY if value is None else parse_verify_key(value.get_secret_value())


def _refuse_missing(environment: str, required: list[tuple[str, object]]) -> None:
    if environment != "production":
        return
    missing = [name for name, value in required if value is None]
    if missing:
        raise ValueError(f"production refuses development defaults; set {', '.join(missing)}")


class HelperSettings(BaseSettings):
    """The helper: a second operator's aggregator, with its own key and state."""

    model_config = SettingsConfigDict(env_prefix="QUIETWIRE_HELPER_", frozen=True, extra="forbid")

    environment: Literal["development", "production"] = "development"
    private_key_path: Path | None = Field(
        default=None,
        description="the helper's X25519 private key file (base64, 0600); unset in "
        "development: generated into state_dir",
    )
    state_dir: Path = Path(".quietwire/helper")
    policy_paths: tuple[Path, ...] = Field(
        default=(DEFAULT_POLICY_PATH,),
        min_length=1,
        description="policy files whose tasks the helper serves (JSON list in the environment)",
    )
    verify_key: SecretStr | None = Field(default=None, description=_VERIFY_KEY_DOC)
    leader_token: SecretStr | None = Field(
        default=None,
        description="bearer token the leader authenticates with; unset in development only",
    )
    max_job_reports: int = Field(default=1000, ge=1, le=10_000)
    max_body_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    host: str = "127.0.0.1"
    port: int = Field(default=8090, ge=0, le=65_535)

    @field_validator("state_dir")
    @classmethod
    def _state_dir(cls, value: Path) -> Path:
        return check_directory(value)

    @field_validator("verify_key")
    @classmethod
    def _verify(cls, value: SecretStr | None) -> SecretStr | None:
        return _check_verify_key(value)

    @model_validator(mode="after")
    def _refuse_insecure_defaults(self) -> Self:
        _refuse_missing(
            self.environment,
            [
                ("QUIETWIRE_HELPER_PRIVATE_KEY_PATH", self.private_key_path),
                ("QUIETWIRE_HELPER_VERIFY_KEY", self.verify_key),
                ("QUIETWIRE_HELPER_LEADER_TOKEN", self.leader_token),
            ],
        )
        return self

    @property
    def key_path(self) -> Path:
        """Where the private key is read from (or generated into, in development)."""
        return self.private_key_path or self.state_dir / "helper.key"

    @property
    def resolved_verify_key(self) -> bytes:
        """The 32-byte verify key (the development key when unset)."""
        return _resolve_verify_key(self.verify_key)


class LeaderSettings(BaseSettings):
    """The leader's aggregation job and collector, next to the ingest's warehouse."""

    model_config = SettingsConfigDict(env_prefix="QUIETWIRE_LEADER_", frozen=True, extra="forbid")

    environment: Literal["development", "production"] = "development"
    state_dir: Path = Field(
        default=Path(".quietwire/ingest"),
        description="the ingest's state directory: its audit log records every batch decision",
    )
    warehouse_path: Path | None = Field(
        default=None, description="the DuckDB warehouse; default state_dir/warehouse.duckdb"
    )
    policy_paths: tuple[Path, ...] = Field(default=(DEFAULT_POLICY_PATH,), min_length=1)
    helper_url: str | None = Field(
        default=None,
        pattern=r"^https?://[^\s]+$",
        description="the helper's base URL; unset: the policies' aggregation.helper.url",
    )
    helper_token: SecretStr | None = Field(
        default=None, description="bearer token sent to the helper; unset in development only"
    )
    verify_key: SecretStr | None = Field(default=None, description=_VERIFY_KEY_DOC)
    interval_seconds: float = Field(default=60.0, gt=0.0, description="pause between runs")
    grace_seconds: float = Field(
        default=3600.0,
        ge=0.0,
        description="how long after a batch's window ends its reports may still arrive; "
        "the batch is collected after that",
    )
    max_job_reports: int = Field(default=500, ge=1, le=10_000)
    helper_timeout: float = Field(default=60.0, gt=0.0)

    @field_validator("state_dir")
    @classmethod
    def _state_dir(cls, value: Path) -> Path:
        return check_directory(value)

    @field_validator("verify_key")
    @classmethod
    def _verify(cls, value: SecretStr | None) -> SecretStr | None:
        return _check_verify_key(value)

    @model_validator(mode="after")
    def _refuse_insecure_defaults(self) -> Self:
        _refuse_missing(
            self.environment,
            [
                ("QUIETWIRE_LEADER_VERIFY_KEY", self.verify_key),
                ("QUIETWIRE_LEADER_HELPER_TOKEN", self.helper_token),
            ],
        )
        return self

    @property
    def resolved_warehouse_path(self) -> Path:
        """The warehouse file, defaulting into the state directory (as the ingest's)."""
        return self.warehouse_path or self.state_dir / "warehouse.duckdb"

    @property
    def audit_path(self) -> Path:
        """The ingest's audit log file."""
        return self.state_dir / "audit.sqlite3"

    @property
    def resolved_verify_key(self) -> bytes:
        """The 32-byte verify key (the development key when unset)."""
        return _resolve_verify_key(self.verify_key)

    @property
    def grace(self) -> timedelta:
        """`grace_seconds` as a timedelta."""
        return timedelta(seconds=self.grace_seconds)
