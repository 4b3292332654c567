"""The ingest's settings, from `QUIETWIRE_INGEST_*` environment variables.

Development defaults let `python -m ingest` run with nothing configured (a generated key
in the state directory, the embedded in-process sink instead of Kafka). Production
refuses those defaults: it needs a provisioned key file and a Kafka cluster.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import (
    Field,
    SecretStr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from policies import DEFAULT_ATTESTATION_POLICY_PATH, DEFAULT_POLICY_PATH, load_policy
from schemas import MAX_BATCH, MAX_SEALED_BYTES

__all__ = ["IngestSettings", "check_bootstrap", "check_directory", "check_region"]

_REGION = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")]
_REGION_CHECK: TypeAdapter[str] = TypeAdapter(_REGION)
_TOPIC_PART = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._-]+$")]
_POLICY_HASH = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


def check_bootstrap(value: str) -> str:
    """`value` if it is a Kafka bootstrap list (``host:port[,host:port]``), else ValueError.

    Checked up front: aiokafka would otherwise fail on the first connection with a bare
    `ValueError` deep inside its resolver.
    """
    for entry in value.split(","):
        host, sep, port = entry.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65_536:
            raise ValueError(
                f"Kafka bootstrap {value!r} is not host:port[,host:port] (a port in 1-65535)"
            )
    return value


def check_directory(path: Path) -> Path:
    """`path` if it is a directory or one can be made there; else ValueError naming the
    file in the way (a state directory set to a file's path)."""
    for at in (path, *path.parents):
        if at.exists():
            if at.is_dir():
                return path
            if at == path:
                raise ValueError(f"{path} is a file, not a directory")
            raise ValueError(f"{at} is a file, so {path} cannot be a directory")
    return path


def check_region(value: str) -> str:
    """`value` if it is a region name as `QUIETWIRE_INGEST_REGION` takes it (the same
    check), else ValueError: a region names a Kafka topic and a key file."""
    try:
        return _REGION_CHECK.validate_python(value)
    except ValidationError:
        raise ValueError(
            f"{value!r} is not a region name (1 to 128 letters, digits, '_', '.', ':' or '-', "
            "as QUIETWIRE_INGEST_REGION)"
        ) from None


def _default_policy_hashes() -> frozenset[str]:
    return frozenset({load_policy().content_hash})


DEFAULT_MAX_BATCH_BYTES = 512 * 1024
"""The producer's largest record batch per partition (`kafka_max_batch_bytes`).

aiokafka's default (16 KiB) holds about ten envelopes, so a wave's envelopes for one
partition went out as many batches, and the idempotent producer sends a partition's
batches one produce request after another, each with its own request encoding, response
parsing and futures: 38 µs of CPU per envelope to publish a wave of 140 envelopes
against 14.5 µs with one batch per partition (`KafkaEnvelopeBus.publish` on a real
broker). Half a MiB holds a wave's envelopes for a partition (about 1.4 KiB each)
and stays under the broker's default limit for a record batch (`message.max.bytes`,
1 MiB)."""


class IngestSettings(BaseSettings):
    """Everything one ingest replica (and the sink runner) is configured with."""

    model_config = SettingsConfigDict(env_prefix="QUIETWIRE_INGEST_", frozen=True, extra="forbid")

    environment: Literal["development", "production"] = "development"
    region: _REGION = "local"
    private_key_path: Path | None = Field(
        default=None,
        description="file holding the region's Curve25519 private key (base64, mode 0600); "
        "unset in development: generated into state_dir",
    )
    state_dir: Path = Path(".quietwire/ingest")
    kafka_bootstrap: str | None = Field(
        default=None, description="host:port[,host:port]; unset: the embedded in-process sink"
    )
    kafka_ack_timeout: float = Field(
        default=10.0, gt=0, description="seconds to wait for Kafka's acks before a 503"
    )
    kafka_max_batch_bytes: int = Field(
        default=DEFAULT_MAX_BATCH_BYTES,
        ge=16 * 1024,
        le=16 * 1024 * 1024,
        description="largest record batch the producer sends to one partition; at most "
        "the topic's max.message.bytes (broker default 1 MiB), or Kafka refuses full "
        "batches (503s); an envelope larger than this goes in a batch of its own",
    )
    topic_prefix: _TOPIC_PART = "quietwire.envelopes"
    warehouse_path: Path | None = Field(
        default=None, description="DuckDB file the sink writes; default state_dir/warehouse.duckdb"
    )
    sink_group: _TOPIC_PART = "quietwire-sink"
    wave_linger_seconds: float = Field(
        default=0.001,
        ge=0,
        le=0.1,
        description="how long a wave of requests waits for more before its commits, "
        "under concurrent load (0: never); a quiet ingest never waits",
    )
    # 1 s, not less: each DuckDB transaction costs about 6 ms of CPU however few rows it
    # holds (two look-ups and the commit), so at 1,000 envelopes/s a 0.2 s drain spent
    # about 30 µs per envelope on them, 1 s about 6 (ingest benchmark, A/B: 6% less
    # server CPU per envelope at batch 1, 10% at batch 10). Analysts read hour-long
    # windows; a second of lag is invisible to them.
    outbox_drain_seconds: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="embedded: how long the outbox gathers items before one DuckDB "
        "transaction stores them (the warehouse lags the answers by about this much)",
    )
    outbox_max_backlog: int = Field(
        default=200_000,
        ge=1,
        description="embedded: items waiting for the warehouse past which requests are "
        "answered 503 (the warehouse is failing or too slow)",
    )
    known_policy_hashes: frozenset[_POLICY_HASH] = Field(
        default_factory=_default_policy_hashes, min_length=1
    )
    policy_paths: tuple[Path, ...] = Field(
        default=(DEFAULT_POLICY_PATH,),
        description="policy files this ingest serves in full: their hashes are known, and "
        "their aggregation tasks are what Prio3 reports are checked against",
    )
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    max_batch: int = Field(default=MAX_BATCH, ge=1, le=MAX_BATCH)
    max_sealed_bytes: int = Field(default=MAX_SEALED_BYTES, ge=128, le=MAX_SEALED_BYTES)
    duplicate_cache_size: int = Field(default=65_536, ge=0)
    max_clock_skew_seconds: float = Field(
        default=300.0,
        ge=0.0,
        description="how far a device clock may run ahead of the ingest's: an envelope sent, "
        "or a window ending, later than this in the future is refused (clock_skew). Old "
        "envelopes are fine (spooled while offline); retention bounds their age",
    )
    attestation_policy_path: Path = Field(
        default=DEFAULT_ATTESTATION_POLICY_PATH,
        description="attestation trust policy (EK roots, PCRs, lifetimes, software tiers)",
    )
    operator_token: SecretStr | None = Field(
        default=None,
        description="bearer token of the operator endpoints (revocation); unset: refused",
    )
    attested_key_cache_seconds: float = Field(
        default=5.0,
        ge=0.0,
        description="how long a replica trusts its cached view of a key's attestation; "
        "bounds how late another replica's revocation is seen here",
    )
    unauthenticated_rate: float = Field(
        default=5.0,
        gt=0.0,
        description="requests per second each source (client address) may make to the "
        "enrollment, attestation and revocation endpoints, on average; more is 429",
    )
    unauthenticated_burst: int = Field(
        default=50, ge=1, description="how many of those requests a source may make at once"
    )
    deletion_rate: float = Field(
        default=0.2,
        gt=0.0,
        description="deletion requests per second each source (client address) may make, "
        "on average; more is 429 (each costs the warehouse a scan of the device's rows, "
        "and any fresh software key may send one)",
    )
    deletion_burst: int = Field(
        default=20, ge=1, description="how many deletion requests a source may make at once"
    )
    audit_sample_seconds: float = Field(
        default=60.0,
        gt=0.0,
        description="interval of the audit log's sampling of unauthenticated decisions: "
        "the first of a kind per source is written, repeats are summarized once per interval",
    )
    audit_key_path: Path | None = Field(
        default=None,
        description="file holding the Ed25519 key that signs audit checkpoints (base64, mode "
        "0600); default state_dir/audit-signing.key, generated on first start",
    )
    audit_checkpoint_entries: int = Field(
        default=1000, ge=1, description="sign a checkpoint after this many new audit entries"
    )
    audit_checkpoint_seconds: float = Field(
        default=60.0,
        gt=0.0,
        description="or after this many seconds with new entries (and always at shutdown)",
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65_535)

    @field_validator("kafka_bootstrap")
    @classmethod
    def _bootstrap(cls, value: str | None) -> str | None:
        return None if value is None else check_bootstrap(value)

    @field_validator("state_dir")
    @classmethod
    def _state_dir(cls, value: Path) -> Path:
        return check_directory(value)

    @model_validator(mode="after")
    def _refuse_insecure_defaults(self) -> Self:
        if self.environment == "production":
            missing = [
                name
                for name, value in (
                    ("QUIETWIRE_INGEST_PRIVATE_KEY_PATH", self.private_key_path),
                    ("QUIETWIRE_INGEST_KAFKA_BOOTSTRAP", self.kafka_bootstrap),
                )
                if value is None
            ]
            if missing:
                raise ValueError(
                    "production refuses development defaults (generated key, embedded sink); "
                    f"set {', '.join(missing)}"
                )
        return self

    def topic_for(self, region: str) -> str:
        """The Kafka topic of a region's envelopes: ``<topic_prefix>.<region>``."""
        return f"{self.topic_prefix}.{region}"

    @property
    def topic(self) -> str:
        """This replica's topic."""
        return self.topic_for(self.region)

    @property
    def resolved_warehouse_path(self) -> Path:
        """The DuckDB file of the sink, defaulting into the state directory."""
        return self.warehouse_path or self.state_dir / "warehouse.duckdb"

    @property
    def resolved_audit_key_path(self) -> Path:
        """The audit checkpoint signing key's file (generated there if absent)."""
        return self.audit_key_path or self.state_dir / "audit-signing.key"

    @property
    def key_path(self) -> Path:
        """Where the private key is read from (or generated into, in development)."""
        return self.private_key_path or self.state_dir / f"ingest-{self.region}.key"
