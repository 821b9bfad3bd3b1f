"""One pydantic-settings object per service, read from CONCORD_* variables (and a stack.env file).

Nothing here connects to anything: settings are built in each entry point's main(), with
load_settings, which says what is wrong with a bad value in one line per CONCORD_* variable.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shlex
import ssl
import typing
from pathlib import Path
from typing import Any, Literal, Self, TypeVar
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails, PydanticUndefined
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

DEFAULT_STATE_DIR = Path(".concord")
# In the state folder: the client settings `concord stack up` leaves for the commands to read.
ENV_FILE = "stack.env"
DEFAULT_ENTERPRISE_ID_SYSTEM = "urn:concord:enterprise-patient-id"
DEFAULT_MLLP_MAX_FRAME_BYTES = 1024 * 1024
# The longest source name ingestion accepts (concord.ingestion.common.MAX_SOURCE_LENGTH, which
# imports Kafka-side code this module must not).
MAX_SOURCE_NAME = 128
# No password: examples end up in error messages.
EXAMPLE_DSN = "postgresql://user@host:5432/concord"


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
        None,
        description="CA bundle that signed the brokers' certificates (SSL, SASL_SSL)",
        examples=["/etc/concord/kafka-ca.pem"],
    )
    kafka_ssl_certfile: Path | None = Field(
        None,
        description="Client certificate, for brokers that require mutual TLS",
        examples=["/etc/concord/kafka-client.pem"],
    )
    kafka_ssl_keyfile: Path | None = Field(
        None,
        description="Private key of the client certificate",
        examples=["/etc/concord/kafka-client.key"],
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL mechanism (SASL_PLAINTEXT, SASL_SSL)", examples=["SCRAM-SHA-512"]
    )
    kafka_sasl_username: str | None = Field(
        None, description="SASL user name", examples=["concord"]
    )
    kafka_sasl_password: SecretStr | None = Field(
        None, description="SASL password", examples=["change-me"]
    )
    kafka_replication_factor: int = Field(
        1, ge=1, description="Replication factor of topics `concord topics create` makes"
    )

    @model_validator(mode="after")
    def _sasl_needs_credentials(self) -> Self:
        if self.kafka_security_protocol.startswith("SASL") and not (
            self.kafka_sasl_mechanism and self.kafka_sasl_username
        ):
            raise ValueError(
                f"CONCORD_KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} needs "
                "CONCORD_KAFKA_SASL_MECHANISM and CONCORD_KAFKA_SASL_USERNAME (e.g. "
                "CONCORD_KAFKA_SASL_MECHANISM=SCRAM-SHA-512 CONCORD_KAFKA_SASL_USERNAME=concord)"
            )
        return self

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
    retry_initial_seconds: float = Field(
        0.2, gt=0, description="First wait before a batch is retried after a transient failure"
    )
    retry_max_seconds: float = Field(
        30.0, gt=0, description="Longest wait between retries (the backoff doubles up to it)"
    )
    stall_after_seconds: float = Field(
        15.0,
        gt=0,
        description="A batch step still waiting after this long (a produce or a query riding "
        "out an outage) reports the worker not ready",
    )
    liveness_timeout_seconds: float = Field(
        300.0,
        gt=0,
        description="/health/live fails when the batch loop has not gone round for this long",
    )
    web_host: str = Field("127.0.0.1", description="Interface for /metrics and /health")
    web_port: int = Field(6066, ge=0, le=65535, description="Port for /metrics and /health")
    log_level: str = Field("info", description="Worker log level")
    data_dir: Path = Field(
        Path("."),
        description="Folder for the worker's local files (Faust's data directory); the local "
        "stack puts it under its state directory",
    )


class DatabaseWorkerSettings(WorkerSettings):
    """Workers that keep state of record in PostgreSQL."""

    database_url: SecretStr = Field(
        description="PostgreSQL DSN, e.g. postgresql://user:pass@host:5432/concord",
        examples=[EXAMPLE_DSN],
    )
    database_pool_size: int = Field(4, ge=1, description="asyncpg pool size")
    database_command_timeout_seconds: float = Field(
        60.0,
        gt=0,
        description="A statement still running after this long fails and its batch is retried",
    )
    migrate_on_start: bool = Field(
        False,
        description="Apply the migrations the database lacks when the worker starts "
        "(advisory-locked: workers starting together are safe); unset, such a worker refuses "
        "to start until `concord db migrate` has run",
        examples=[True],
    )


class MllpSettings(BaseSettings):
    """The MLLP listener: where it listens, its limits and TLS (CONCORD_MLLP_* variables)."""

    model_config = SettingsConfigDict(env_prefix="CONCORD_", extra="ignore")

    mllp_host: str = Field(
        "127.0.0.1",
        description="Interface the MLLP listener binds; any but a loopback address needs TLS "
        "(CONCORD_MLLP_TLS_CERTFILE) or CONCORD_MLLP_INSECURE_PLAINTEXT",
    )
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
        description="Source every message on this listener is recorded as (one listener per "
        "port), unless its client certificate is in CONCORD_MLLP_CLIENT_SOURCES; never taken "
        "from the message",
        min_length=1,
        max_length=MAX_SOURCE_NAME,
        examples=["lab-system"],
    )
    mllp_client_sources: dict[str, str] = Field(
        default_factory=dict,
        description="Source per client certificate, as JSON: a subject CN or subjectAltName "
        "(DNS, URI, e-mail) of the verified certificate -> the source its messages are recorded "
        "as; needs CONCORD_MLLP_TLS_CLIENT_CAFILE",
        examples=[{"lab-engine.example.org": "lab-system"}],
    )
    mllp_source_from_msh: bool = Field(
        False,
        description="Development only (the local stack sets it), refused unless "
        "CONCORD_MLLP_HOST is loopback: a connection with no configured source names its own, "
        "in MSH-3 (else MSH-4)",
    )
    mllp_write_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="Longest wait for Kafka to acknowledge a message; past it the sender gets "
        "AE and keeps the message",
    )
    mllp_tls_certfile: Path | None = Field(
        None,
        description="Server certificate (PEM); setting it turns TLS on",
        examples=["/etc/concord/mllp.pem"],
    )
    mllp_tls_keyfile: Path | None = Field(
        None,
        description="Private key of the server certificate (PEM), if not in the certfile",
        examples=["/etc/concord/mllp.key"],
    )
    mllp_tls_client_cafile: Path | None = Field(
        None,
        description="CA bundle for client certificates; when set, clients must present one "
        "(mutual TLS)",
        examples=["/etc/concord/mllp-clients-ca.pem"],
    )
    mllp_insecure_plaintext: bool = Field(
        False,
        description="Let a listener on a non-loopback address run without TLS: HL7 (PHI) "
        "crosses the network in clear text and any host that reaches the port can send",
    )

    @field_validator("mllp_client_sources")
    @classmethod
    def _source_names(cls, sources: dict[str, str]) -> dict[str, str]:
        for name, source in sources.items():
            if not name.strip():
                raise ValueError("a certificate name is empty")
            # The rule ingestion applies to a record's source, so no record is refused for it.
            if not (0 < len(source) <= MAX_SOURCE_NAME and source.strip() == source):
                raise ValueError(
                    f"the source for {name!r} must be 1-{MAX_SOURCE_NAME} characters, "
                    "without spaces around them"
                )
            if not source.isprintable():
                raise ValueError(f"the source for {name!r} must be printable")
        return sources

    @model_validator(mode="after")
    def _tls_needs_a_certificate(self) -> Self:
        if self.mllp_tls_certfile is None and (
            self.mllp_tls_keyfile is not None or self.mllp_tls_client_cafile is not None
        ):
            raise ValueError(
                "CONCORD_MLLP_TLS_KEYFILE/CLIENT_CAFILE need CONCORD_MLLP_TLS_CERTFILE "
                "(e.g. CONCORD_MLLP_TLS_CERTFILE=/etc/concord/mllp.pem)"
            )
        # A certificate's names say who the client is only once the listener has verified it.
        if self.mllp_client_sources and self.mllp_tls_client_cafile is None:
            raise ValueError(
                "CONCORD_MLLP_CLIENT_SOURCES needs CONCORD_MLLP_TLS_CLIENT_CAFILE: a client "
                "certificate's names are trusted only when the listener verifies it "
                "(e.g. CONCORD_MLLP_TLS_CLIENT_CAFILE=/etc/concord/mllp-clients-ca.pem)"
            )
        return self

    def listener_problem(self) -> str | None:
        """Why a listener with these settings must not start, in one line naming the variables
        to change; None when it may. Checked when the worker's settings load (with
        CONCORD_MLLP_ENABLED) and again by MllpServer.from_settings (TLS only)."""
        exposed = plaintext_exposure(
            self.mllp_host, tls=self.mllp_tls_certfile is not None,
            allowed=self.mllp_insecure_plaintext,
        )  # fmt: skip
        if exposed:
            return exposed
        if self.mllp_source_from_msh and not is_loopback(self.mllp_host):
            # No opt-out: over TLS or not, anyone who reaches the port could name any source.
            return (
                f"CONCORD_MLLP_SOURCE_FROM_MSH=true lets each sender name its own source, so it "
                f"is refused unless CONCORD_MLLP_HOST is a loopback address, not "
                f"{self.mllp_host!r}: set CONCORD_MLLP_SOURCE or CONCORD_MLLP_CLIENT_SOURCES "
                "instead"
            )
        if not (self.mllp_source or self.mllp_client_sources or self.mllp_source_from_msh):
            return (
                "the MLLP listener has no source to record messages as: set "
                "CONCORD_MLLP_SOURCE (every message on this listener, e.g. "
                "CONCORD_MLLP_SOURCE=lab-system) or CONCORD_MLLP_CLIENT_SOURCES (per client "
                "certificate, with CONCORD_MLLP_TLS_CLIENT_CAFILE)"
            )
        return None

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


def is_loopback(host: str) -> bool:
    """Whether a listener on ``host`` is reachable from this machine only: 127.0.0.0/8, ::1 or
    "localhost". Other names are not looked up (the answer could change after the check), so
    they count as reachable from the network, as do "" and 0.0.0.0 (every interface)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def plaintext_exposure(host: str, *, tls: bool, allowed: bool) -> str | None:
    """The one-line refusal for a plain-TCP MLLP listener on a non-loopback address; None
    when it is loopback, has TLS, or the insecure opt-out is set."""
    if tls or allowed or is_loopback(host):
        return None
    return (
        f"CONCORD_MLLP_HOST={host!r} is not a loopback address and TLS is off: set "
        "CONCORD_MLLP_TLS_CERTFILE (and CONCORD_MLLP_TLS_CLIENT_CAFILE for mutual TLS), or bind "
        "CONCORD_MLLP_HOST=127.0.0.1, or accept HL7 in clear text from anyone who reaches the "
        "port with CONCORD_MLLP_INSECURE_PLAINTEXT=true"
    )


class IngestionSettings(DatabaseWorkerSettings, MllpSettings):
    """The ingestion service: raw topics in, ingested records and dead letters out; with
    mllp_enabled, an MLLP listener writing HL7 v2 to ehr.raw.hl7v2 too."""

    mllp_enabled: bool = Field(
        False, description="Run the MLLP listener (CONCORD_MLLP_*) in this worker", examples=[True]
    )

    @model_validator(mode="after")
    def _listener_may_start(self) -> Self:
        # Only a listener that runs is checked: the host or a source alone expose nothing.
        problem = self.listener_problem() if self.mllp_enabled else None
        if problem:
            raise ValueError(problem)
        return self

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
        examples=[{"lab-system": "America/New_York"}],
    )
    default_time_zone: str | None = Field(
        None,
        description="Zone for sources not in source_time_zones; unset, a zone-less HL7 v2 "
        "timestamp from such a source is dead-lettered (HL7_TIME_ZONE_UNKNOWN), not guessed",
        examples=["America/New_York"],
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
        raise ValueError(f"{name!r} is not an IANA time zone") from None
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
    identifier_systems_path: Path | None = Field(
        None,
        description="YAML table of the identifier systems that are one system across formats "
        "(FHIR URIs, HL7 assigning authorities, types; docs/identity.md); unset: the built-in one",
        examples=["/etc/concord/identifier_systems.yaml"],
    )


class ConflictsSettings(DatabaseWorkerSettings):
    """The conflicts service: facts in, conflict lifecycle events out."""

    policy_path: Path | None = Field(
        None,
        description="Source-of-truth policy file (YAML); the built-in default when unset",
        examples=["/etc/concord/policy.yaml"],
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


class NarrativeSettings(DatabaseWorkerSettings):
    """The narrative service: clinical documents in, facts read from their text out, the rest
    as text review tasks in PostgreSQL."""

    max_batch_records: int = Field(
        50,
        ge=1,
        description="Most documents one batch reads (a document takes milliseconds, so the "
        "batches are small)",
    )
    policy_path: Path | None = Field(
        None,
        description="The policy file (as the conflicts worker's): its text.min_confidence "
        "decides which findings are facts; unset, the built-in policy",
        examples=["/etc/concord/policy.yaml"],
    )


class AlertingSettings(DatabaseWorkerSettings):
    """The alerting service: conflict events in, alerts in PostgreSQL and on concord.alerts."""


class ReviewSettings(KafkaSettings):
    """The review service: the reviewers' API and web page over PostgreSQL, decisions out on
    Kafka, every PHI read and every decision in the audit trail."""

    database_url: SecretStr = Field(
        description="PostgreSQL DSN (user, password, host, port, database)",
        examples=[EXAMPLE_DSN],
    )
    database_pool_size: int = Field(4, ge=1, description="asyncpg pool size")
    review_host: str = Field(
        "127.0.0.1", description="Interface the review API and web page listen on"
    )
    review_port: int = Field(8480, ge=0, le=65535, description="Port of the review API")
    oidc_issuer: str | None = Field(
        None,
        description="OpenID Connect issuer whose bearer tokens (JWT) the API accepts; its "
        "`iss` must match. Unset: only tokens signed with the local key (local stack)",
        examples=["https://login.hospital.example/realms/clinical"],
    )
    oidc_jwks_url: str | None = Field(
        None,
        description="The issuer's JSON Web Key Set; unset: discovered from the issuer's "
        "/.well-known/openid-configuration",
        examples=["https://login.hospital.example/realms/clinical/protocol/openid-connect/certs"],
    )
    oidc_audience: str = Field(
        "concord-review", description="The `aud` a token must carry to be accepted"
    )
    oidc_role_claim: str = Field(
        "concord_roles",
        description="The token claim (a string or a list) naming the caller's Concord role: "
        "reviewer, clinician, auditor, sre or admin",
    )
    oidc_client_id: str | None = Field(
        None,
        description="The web page's client id at the OpenID Connect issuer: set, the sign-in "
        "page offers to sign in with the issuer (authorization code flow with PKCE); unset, it "
        "takes a pasted token",
        examples=["concord-review-web"],
    )
    oidc_client_secret: SecretStr | None = Field(
        None,
        description="The web page's client secret, for a confidential client (sent to the "
        "token endpoint with HTTP Basic); unset: a public client, PKCE alone",
        examples=["change-me"],
    )
    review_public_url: str | None = Field(
        None,
        description="The review service's external base URL (its TLS proxy's): the sign-in's "
        "redirect URI is this followed by /ui/callback. Required with CONCORD_OIDC_CLIENT_ID",
        examples=["https://review.hospital.example"],
    )
    oidc_scopes: str = Field(
        "openid profile",
        description="Scopes the web page's sign-in asks the issuer for, space-separated; "
        "`openid` among them",
    )
    local_key_path: Path | None = Field(
        None,
        description="Private key file (PEM) the local stack signs tokens with "
        "(`concord token issue`); the API accepts tokens it signed. Never set in production",
        examples=["./.concord/review-signing-key.pem"],
    )
    rate_limit_per_minute: int = Field(
        300, ge=1, description="Requests a principal may make per minute before 429"
    )
    audit_anchor_seconds: float = Field(
        300.0,
        gt=0,
        description="How often the head of the audit hash chain is published "
        "(concord.audit.anchors and a log line), so that truncation is detectable",
    )
    log_level: str = Field("info", description="Review service log level")

    @field_validator(
        "oidc_issuer",
        "oidc_jwks_url",
        "oidc_client_id",
        "oidc_client_secret",
        "review_public_url",
        mode="before",
    )
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        # Compose passes an unset variable as an empty string.
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("review_public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        url = value.strip().rstrip("/")
        parsed = urlsplit(url)
        secure = parsed.scheme == "https" or (
            parsed.scheme == "http" and is_loopback(parsed.hostname or "")
        )
        if not (secure and parsed.hostname) or parsed.query or parsed.fragment:
            raise ValueError(
                "must be the https:// URL the browsers reach the review service at (http:// "
                "only to a loopback address), without a query or fragment"
            )
        return url

    @field_validator("oidc_scopes")
    @classmethod
    def _openid_scope(cls, value: str) -> str:
        scopes = value.split()
        if "openid" not in scopes:
            raise ValueError("must include the scope openid (e.g. 'openid profile')")
        return " ".join(scopes)

    @model_validator(mode="after")
    def _web_sign_in(self) -> Self:
        if self.oidc_client_id is None:
            if self.oidc_client_secret is not None:
                raise ValueError(
                    "CONCORD_OIDC_CLIENT_SECRET is set without CONCORD_OIDC_CLIENT_ID: set the "
                    "client id the secret belongs to "
                    "(e.g. CONCORD_OIDC_CLIENT_ID=concord-review-web)"
                )
            return self
        if self.oidc_issuer is None:
            raise ValueError(
                "CONCORD_OIDC_CLIENT_ID needs CONCORD_OIDC_ISSUER: the identity provider the "
                "web page signs in with (e.g. "
                "CONCORD_OIDC_ISSUER=https://login.hospital.example/realms/clinical)"
            )
        if self.review_public_url is None:
            raise ValueError(
                "CONCORD_REVIEW_PUBLIC_URL: not set, and CONCORD_OIDC_CLIENT_ID needs it to "
                "build the sign-in's redirect URI {url}/ui/callback "
                "(e.g. CONCORD_REVIEW_PUBLIC_URL=https://review.hospital.example)"
            )
        return self

    @property
    def oidc_redirect_uri(self) -> str | None:
        """Where the identity provider sends the browser back after sign-in."""
        return f"{self.review_public_url}/ui/callback" if self.review_public_url else None


class ClientSettings(KafkaSettings):
    """What the `concord` command-line tools read: usually from the stack's stack.env."""

    database_url: SecretStr | None = Field(
        None, description="PostgreSQL DSN of the stack", examples=[EXAMPLE_DSN]
    )
    mllp_host: str = Field("127.0.0.1", description="Host of the MLLP listener")
    mllp_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Port of the MLLP listener (stack.env gives it)",
        examples=[2575],
    )


# --- what is wrong with a setting, in one line per variable -------------------------------------

S = TypeVar("S", bound=BaseSettings)

ENVIRONMENT = "the environment"


class SettingsProblem(ValueError):
    """Settings that cannot be built. `lines`: one per bad CONCORD_* variable, naming it, what
    is wrong with its value and an example of a good one; never a secret's value."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        super().__init__("\n".join(lines))


def load_settings(cls: type[S], *, env_file: Path | None = None) -> S:
    """cls() from the CONCORD_* variables (and env_file, which they override); SettingsProblem
    says what is wrong instead of pydantic's errors, which name fields, not variables."""
    try:
        return cls(_env_file=env_file)
    except ValidationError as error:
        raise SettingsProblem(validation_problems(cls, error)) from None
    except SettingsError as error:  # a value that is not JSON, for a dict or list field
        raise SettingsProblem([_unparsable(cls, error, env_file)]) from None


def env_name(cls: type[BaseSettings], field: str) -> str:
    """The variable a field is read from: CONCORD_ and its name, upper-cased."""
    return f"{cls.model_config.get('env_prefix', '')}{field}".upper()


def setting_source(name: str, env_file: Path | None) -> tuple[str, str] | None:
    """(where, raw value) of a variable as pydantic-settings finds it: the environment first
    (names in any case), then env_file; None when neither sets it."""
    for key, value in os.environ.items():
        if key.upper() == name:
            return ENVIRONMENT, value
    if env_file is not None and env_file.is_file():
        from dotenv import dotenv_values

        for key, found in dotenv_values(env_file).items():
            if key.upper() == name and found is not None:
                return str(env_file), found
    return None


def validation_problems(cls: type[BaseSettings], error: ValidationError) -> list[str]:
    """One line per variable with a bad value (its first error), then what concerns several
    variables together (a model validator's message, which names them itself)."""
    lines: dict[str, str] = {}
    together: list[str] = []
    for item in error.errors(include_url=False):
        loc = item["loc"]
        field = loc[0] if loc and isinstance(loc[0], str) else None
        if field is None or field not in cls.model_fields:
            together.append(_problem(item))
        elif field not in lines:
            lines[field] = _field_line(cls, field, item)
    return [*lines.values(), *together]


_SECRET_FIELD = re.compile(r"password|secret|token")


def _is_secret(field: str, info: FieldInfo) -> bool:
    annotation = info.annotation
    return (
        annotation is SecretStr
        or SecretStr in typing.get_args(annotation)
        or bool(_SECRET_FIELD.search(field))
    )


def _shown(value: str) -> str:
    return repr(value if len(value) <= 60 else value[:57] + "...")


def setting_example(cls: type[BaseSettings], field: str) -> str | None:
    """NAME=value with the field's first example, else its default (shell-quoted); None when
    it has neither."""
    info = cls.model_fields[field]
    value = info.examples[0] if info.examples else info.get_default(call_default_factory=True)
    if value is None or value is PydanticUndefined or value in ({}, []):
        return None
    if isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, dict | list):
        text = json.dumps(value)
    else:
        text = str(value)
    return f"{env_name(cls, field)}={shlex.quote(text)}"


def _example(cls: type[BaseSettings], field: str) -> str:
    example = setting_example(cls, field)
    return f" (e.g. {example})" if example else ""


def _field_line(cls: type[BaseSettings], field: str, item: ErrorDetails) -> str:
    name = env_name(cls, field)
    problem = _problem(item)
    nested = item["loc"][1:]
    if nested:  # inside a JSON value: say where
        problem = f"at {'.'.join(str(part) for part in nested)}: {problem}"
    value = item.get("input")
    shown = ""
    if not nested and isinstance(value, str) and not _is_secret(field, cls.model_fields[field]):
        shown = "=" + _shown(value)
        if _shown(value) in problem:  # the problem quotes the value already
            shown = ""
    return f"{name}{shown}: {problem}{_example(cls, field)}"


_PROBLEMS = {
    "missing": "not set",
    "int_parsing": "not an integer",
    "int_type": "not an integer",
    "int_from_float": "not an integer",
    "float_parsing": "not a number",
    "float_type": "not a number",
    "finite_number": "not a finite number",
    "bool_parsing": "not true or false",
    "bool_type": "not true or false",
    "string_type": "not a string",
    "dict_type": "not a JSON object",
    "list_type": "not a JSON list",
    "path_type": "not a path",
    "greater_than": "must be more than {gt}",
    "greater_than_equal": "must be {ge} or more",
    "less_than": "must be less than {lt}",
    "less_than_equal": "must be {le} or less",
    "literal_error": "must be {expected}",
    "string_too_short": "must be at least {min_length} characters",
    "string_too_long": "must be at most {max_length} characters",
}


def _problem(item: ErrorDetails) -> str:
    """What is wrong, in words: pydantic's message without its "Input should be" and "Value
    error," phrasing."""
    context = {key: _number(value) for key, value in item.get("ctx", {}).items()}
    if item["type"] == "string_too_short" and context.get("min_length") == "1":
        return "must not be empty"
    template = _PROBLEMS.get(item["type"])
    if template is not None:
        try:
            return template.format(**context)
        except (KeyError, IndexError):
            pass
    message = item["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if message[:2].istitle():  # a sentence's first word, not a variable's name
        message = message[:1].lower() + message[1:]
    return message


def _number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


_UNPARSABLE_FIELD = re.compile(r'field "(?P<field>[^"]+)"')


def _unparsable(cls: type[BaseSettings], error: SettingsError, env_file: Path | None) -> str:
    match = _UNPARSABLE_FIELD.search(str(error))
    if match is None or match["field"] not in cls.model_fields:
        return f"the CONCORD_* settings cannot be read: {error}"
    field = match["field"]
    name = env_name(cls, field)
    source = setting_source(name, env_file)
    shown = ""
    if source is not None and not _is_secret(field, cls.model_fields[field]):
        shown = "=" + _shown(source[1])
    problem = "not valid JSON" if "parsing" in str(error) else "cannot be read"
    return f"{name}{shown}: {problem}{_example(cls, field)}"
