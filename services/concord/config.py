"""One pydantic-settings object per service, read from CONCORD_* variables (and a stack.env file).

Nothing here connects to anything: settings are built in each entry point's main().
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any, Literal, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_STATE_DIR = Path(".concord")
DEFAULT_ENTERPRISE_ID_SYSTEM = "urn:concord:enterprise-patient-id"
DEFAULT_MLLP_MAX_FRAME_BYTES = 1024 * 1024


class KafkaSettings(BaseSettings):
    """Where the Kafka cluster is and how to authenticate to it (TLS, SASL)."""

    model_config = SettingsConfigDict(env_prefix="CONCORD_", extra="ignore")

    bootstrap_servers: str = Field(
        "127.0.0.1:9092", description="Kafka bootstrap servers, comma-separated host:port"
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="How clients talk to the brokers"
    )
    kafka_ssl_cafile: Path | None = Field(
        None, description="CA bundle that signed the brokers' certificates (SSL, SASL_SSL)"
    )
    kafka_ssl_certfile: Path | None = Field(
        None, description="Client certificate, for brokers that require mutual TLS"
    )
    kafka_ssl_keyfile: Path | None = Field(
        None, description="Private key of the client certificate"
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL mechanism (SASL_PLAINTEXT, SASL_SSL)"
    )
    kafka_sasl_username: str | None = Field(None, description="SASL user name")
    kafka_sasl_password: SecretStr | None = Field(None, description="SASL password")
    kafka_replication_factor: int = Field(
        1, ge=1, description="Replication factor of topics `concord topics create` makes"
    )

    def kafka_options(self) -> dict[str, Any]:
        """Keyword arguments for aiokafka clients: servers, TLS context, SASL credentials."""
        from aiokafka.helpers import create_ssl_context

        options: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": self.kafka_security_protocol,
        }
        if self.kafka_security_protocol in ("SSL", "SASL_SSL"):
            options["ssl_context"] = create_ssl_context(
                cafile=str(self.kafka_ssl_cafile) if self.kafka_ssl_cafile else None,
                certfile=str(self.kafka_ssl_certfile) if self.kafka_ssl_certfile else None,
                keyfile=str(self.kafka_ssl_keyfile) if self.kafka_ssl_keyfile else None,
            )
        if self.kafka_security_protocol.startswith("SASL"):
            if not (self.kafka_sasl_mechanism and self.kafka_sasl_username):
                raise ValueError(
                    "SASL needs CONCORD_KAFKA_SASL_MECHANISM and CONCORD_KAFKA_SASL_USERNAME"
                )
            options["sasl_mechanism"] = self.kafka_sasl_mechanism
            options["sasl_plain_username"] = self.kafka_sasl_username
            options["sasl_plain_password"] = (
                self.kafka_sasl_password.get_secret_value() if self.kafka_sasl_password else None
            )
        return options


class WorkerSettings(KafkaSettings):
    """What every stream worker needs: the broker, its consumer tuning, and its web port."""

    fetch_max_wait_ms: int = Field(
        20,
        ge=1,
        description="Longest a fetch waits for data; the local broker never returns early, "
        "so this bounds per-hop latency",
    )
    session_timeout_ms: int = Field(
        6000, ge=1000, description="Consumer group session timeout; a join takes about half"
    )
    heartbeat_interval_ms: int = Field(2000, ge=100, description="Consumer heartbeat interval")
    max_batch_records: int = Field(
        1000, ge=1, description="Most records one batch consumes, processes and produces"
    )
    web_host: str = Field("127.0.0.1", description="Interface for /metrics and /health")
    web_port: int = Field(6066, ge=0, le=65535, description="Port for /metrics and /health")
    log_level: str = Field("info", description="Worker log level")


class DatabaseWorkerSettings(WorkerSettings):
    """Workers that keep state of record in PostgreSQL."""

    database_url: SecretStr = Field(
        description="PostgreSQL DSN, e.g. postgresql://user:pass@host:5432/concord"
    )
    database_pool_size: int = Field(4, ge=1, description="asyncpg pool size")


class MllpSettings(BaseSettings):
    """The MLLP listener: where it listens, its limits and TLS (CONCORD_MLLP_* variables)."""

    model_config = SettingsConfigDict(env_prefix="CONCORD_", extra="ignore")

    mllp_host: str = Field("127.0.0.1", description="Interface the MLLP listener binds")
    mllp_port: int = Field(
        2575, ge=0, le=65535, description="MLLP port (2575 is HL7's registered port; 0 = any)"
    )
    mllp_max_frame_bytes: int = Field(
        DEFAULT_MLLP_MAX_FRAME_BYTES,
        ge=1024,
        description="Largest message accepted; larger frames are refused with an AR NAK",
    )
    mllp_idle_timeout_seconds: float = Field(
        300.0, gt=0, description="Connections silent this long are closed"
    )
    mllp_max_connections: int = Field(
        100, ge=1, description="Concurrent connections; more are closed as they arrive"
    )
    mllp_source: str | None = Field(
        None,
        description="Source system of every message on this listener (one listener per "
        "interface); unset, a message's MSH-3 sending application, else its MSH-4 facility",
        min_length=1,
        max_length=128,
    )
    mllp_write_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="Longest wait for Kafka to acknowledge a message; past it the sender gets "
        "AE and keeps the message",
    )
    mllp_tls_certfile: Path | None = Field(
        None, description="Server certificate (PEM); setting it turns TLS on"
    )
    mllp_tls_keyfile: Path | None = Field(
        None, description="Private key of the server certificate (PEM), if not in the certfile"
    )
    mllp_tls_client_cafile: Path | None = Field(
        None,
        description="CA bundle for client certificates; when set, clients must present one "
        "(mutual TLS)",
    )

    @model_validator(mode="after")
    def _tls_needs_a_certificate(self) -> Self:
        if self.mllp_tls_certfile is None and (
            self.mllp_tls_keyfile is not None or self.mllp_tls_client_cafile is not None
        ):
            raise ValueError(
                "CONCORD_MLLP_TLS_KEYFILE/CLIENT_CAFILE need CONCORD_MLLP_TLS_CERTFILE"
            )
        return self

    def ssl_context(self) -> ssl.SSLContext | None:
        """The listener's TLS context (TLS 1.2 or later), or None for plain TCP."""
        if self.mllp_tls_certfile is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.mllp_tls_certfile, self.mllp_tls_keyfile)
        if self.mllp_tls_client_cafile is not None:
            context.load_verify_locations(cafile=self.mllp_tls_client_cafile)
            context.verify_mode = ssl.CERT_REQUIRED
        return context


class IngestionSettings(DatabaseWorkerSettings, MllpSettings):
    """The ingestion service: raw topics in, ingested records and dead letters out; with
    mllp_enabled, an MLLP listener writing HL7 v2 to ehr.raw.hl7v2 too."""

    mllp_enabled: bool = Field(
        False, description="Run the MLLP listener (CONCORD_MLLP_*) in this worker"
    )

    dedupe_window_days: float = Field(
        30,
        gt=0,
        description="How long an emitted (source, record, version) is remembered, "
        "so that the same version sent again is not emitted twice",
    )

    max_payload_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, description="Raw events larger than this are dead-lettered"
    )
    source_time_zones: dict[str, str] = Field(
        default_factory=dict,
        description="IANA time zone of each source system's HL7 v2 timestamps that carry no "
        'offset, as JSON: {"lab-system": "America/Chicago"}',
    )
    default_time_zone: str | None = Field(
        None,
        description="Zone for sources not in source_time_zones; unset, a zone-less HL7 v2 "
        "timestamp from such a source is dead-lettered (HL7_TIME_ZONE_UNKNOWN), not guessed",
    )

    @field_validator("source_time_zones")
    @classmethod
    def _known_zones(cls, zones: dict[str, str]) -> dict[str, str]:
        for name in zones.values():
            _check_zone(name)
        return zones

    @field_validator("default_time_zone")
    @classmethod
    def _known_default(cls, name: str | None) -> str | None:
        return _check_zone(name) if name else None


def _check_zone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{name!r} is not an IANA time zone (e.g. America/Chicago)") from None
    return name


class NormalizationSettings(DatabaseWorkerSettings):
    """The normalization service: ingested records in, facts keyed by enterprise id out; the
    identity index in PostgreSQL."""

    identity_link_threshold: float = Field(
        20.0, description="Match score (bits) from which a record links to a known patient"
    )
    identity_review_threshold: float = Field(
        13.0,
        description="Score from which an uncertain match gets a provisional id and a review "
        "task; below it, a new enterprise id",
    )

    enterprise_id_systems: list[str] = Field(
        default_factory=lambda: [DEFAULT_ENTERPRISE_ID_SYSTEM],
        description="Identifier systems (e.g. an enterprise MPI) whose value is the enterprise "
        "patient id; the first one a Patient carries wins",
    )


class ConflictsSettings(DatabaseWorkerSettings):
    """The conflicts service: facts in, conflict lifecycle events out."""

    policy_path: Path | None = Field(
        None, description="Source-of-truth policy file (YAML); the built-in default when unset"
    )
    policy_reload_seconds: float = Field(
        5.0,
        ge=0,
        description="How often the policy file is checked for changes; a changed, valid file "
        "replaces the policy in force without a restart (0: never)",
    )
    cache_max_keys: int = Field(
        200_000,
        ge=1,
        description="Patient attributes whose state the worker keeps in memory; the least "
        "recently used beyond this are dropped and reloaded from PostgreSQL when needed",
    )


class AlertingSettings(DatabaseWorkerSettings):
    """The alerting service: conflict events in, alerts in PostgreSQL and on concord.alerts."""


class ClientSettings(KafkaSettings):
    """What the `concord` command-line tools read: usually from the stack's stack.env."""

    database_url: SecretStr | None = Field(None, description="PostgreSQL DSN of the stack")
    api_url: str | None = Field(None, description="Base URL of the alerting worker's web API")
    mllp_host: str = Field("127.0.0.1", description="Host of the MLLP listener")
    mllp_port: int | None = Field(
        None, ge=1, le=65535, description="Port of the MLLP listener (stack.env gives it)"
    )
