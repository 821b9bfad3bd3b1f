"""Settings turn into the right Kafka client options; secrets stay secret."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from pydantic import ValidationError

from concord.config import ClientSettings, ConflictsSettings, IngestionSettings, KafkaSettings


def test_plaintext_options_name_only_the_servers() -> None:
    options = KafkaSettings(bootstrap_servers="k1:9092,k2:9092").kafka_options()
    assert options == {"bootstrap_servers": "k1:9092,k2:9092", "security_protocol": "PLAINTEXT"}


def test_sasl_ssl_builds_a_tls_context_and_credentials() -> None:
    settings = KafkaSettings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="concord",
        kafka_sasl_password="s3cret",  # type: ignore[arg-type]
    )
    options = settings.kafka_options()
    assert isinstance(options["ssl_context"], ssl.SSLContext)
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_username"] == "concord"
    assert options["sasl_plain_password"] == "s3cret"
    assert "s3cret" not in repr(settings)


def test_sasl_without_credentials_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="CONCORD_KAFKA_SASL_MECHANISM"):
        KafkaSettings(kafka_security_protocol="SASL_PLAINTEXT").kafka_options()


def test_unknown_protocol_is_rejected() -> None:
    with pytest.raises(ValidationError):
        KafkaSettings(kafka_security_protocol="TLS")  # type: ignore[arg-type]


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONCORD_BOOTSTRAP_SERVERS", "broker:19092")
    monkeypatch.setenv("CONCORD_DATABASE_URL", "postgresql://u:pw@db/concord")
    monkeypatch.setenv("CONCORD_POLICY_PATH", "/etc/concord/policy.yaml")
    settings = ConflictsSettings()
    assert settings.bootstrap_servers == "broker:19092"
    assert settings.database_url.get_secret_value().endswith("@db/concord")
    assert "pw@" not in repr(settings)
    assert settings.policy_path == Path("/etc/concord/policy.yaml")


def test_a_database_worker_without_a_database_url_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONCORD_DATABASE_URL", raising=False)
    with pytest.raises(ValidationError, match="database_url"):
        ConflictsSettings()


def test_client_settings_read_the_stack_env_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CONCORD_BOOTSTRAP_SERVERS", raising=False)
    env = tmp_path / "stack.env"
    env.write_text("CONCORD_BOOTSTRAP_SERVERS=127.0.0.1:4242\n")
    settings = ClientSettings(_env_file=env)  # type: ignore[call-arg]
    assert settings.bootstrap_servers == "127.0.0.1:4242"


DSN = "postgresql://unused@127.0.0.1:1/none"


def test_time_zones_are_checked_when_the_settings_are_built() -> None:
    settings = IngestionSettings(
        database_url=DSN,
        source_time_zones={"lab": "America/Chicago"},
        default_time_zone="Europe/Paris",
    )
    assert settings.source_time_zones == {"lab": "America/Chicago"}
    with pytest.raises(ValidationError, match="not an IANA time zone"):
        IngestionSettings(database_url=DSN, source_time_zones={"lab": "Mars/Olympus"})
    with pytest.raises(ValidationError, match="not an IANA time zone"):
        IngestionSettings(database_url=DSN, default_time_zone="CST6CDT/nowhere")


def test_time_zones_come_from_json_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONCORD_SOURCE_TIME_ZONES", '{"lab": "Asia/Tokyo"}')
    monkeypatch.setenv("CONCORD_DATABASE_URL", DSN)
    assert IngestionSettings().source_time_zones == {"lab": "Asia/Tokyo"}
