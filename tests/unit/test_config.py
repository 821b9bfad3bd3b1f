"""Settings turn into the right Kafka client options; secrets stay secret."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import pytest
from pydantic import ValidationError
from pydantic_settings import BaseSettings

from concord.config import (
    AlertingSettings,
    ClientSettings,
    ConflictsSettings,
    IngestionSettings,
    KafkaSettings,
    NormalizationSettings,
    SettingsProblem,
    load_settings,
    setting_example,
    validation_problems,
)


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


# --- a bad setting is one line naming the variable (issue 12, item 4) ------------------------


def _clear_concord_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.upper().startswith("CONCORD_"):
            monkeypatch.delenv(key)


def _problems(cls: type[BaseSettings], env_file: Path | None = None) -> list[str]:
    with pytest.raises(SettingsProblem) as caught:
        load_settings(cls, env_file=env_file)
    return caught.value.lines


def test_a_bad_value_names_the_variable_the_problem_and_a_good_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _clear_concord_env(monkeypatch)
    monkeypatch.setenv("CONCORD_WEB_PORT", "abc")
    monkeypatch.setenv("concord_kafka_security_protocol", "TLS")  # any case, as pydantic reads it
    monkeypatch.setenv("CONCORD_SESSION_TIMEOUT_MS", "10")
    monkeypatch.setenv("CONCORD_MLLP_ENABLED", "maybe")
    monkeypatch.setenv("CONCORD_DEDUPE_WINDOW_DAYS", "0")
    monkeypatch.setenv("CONCORD_MLLP_SOURCE", "")
    monkeypatch.setenv("CONCORD_SOURCE_TIME_ZONES", '{"lab": "Mars/Olympus"}')
    expected = [
        "CONCORD_KAFKA_SECURITY_PROTOCOL='TLS': must be 'PLAINTEXT', 'SSL', 'SASL_PLAINTEXT' "
        "or 'SASL_SSL' (e.g. CONCORD_KAFKA_SECURITY_PROTOCOL=PLAINTEXT)",
        "CONCORD_SESSION_TIMEOUT_MS='10': must be 1000 or more "
        "(e.g. CONCORD_SESSION_TIMEOUT_MS=6000)",
        "CONCORD_WEB_PORT='abc': not an integer (e.g. CONCORD_WEB_PORT=6066)",
        "CONCORD_DATABASE_URL: not set (e.g. "
        "CONCORD_DATABASE_URL=postgresql://user@host:5432/concord)",
        "CONCORD_MLLP_SOURCE='': must not be empty (e.g. CONCORD_MLLP_SOURCE=lab-system)",
        "CONCORD_MLLP_ENABLED='maybe': not true or false (e.g. CONCORD_MLLP_ENABLED=true)",
        "CONCORD_DEDUPE_WINDOW_DAYS='0': must be more than 0 (e.g. CONCORD_DEDUPE_WINDOW_DAYS=30)",
        "CONCORD_SOURCE_TIME_ZONES: 'Mars/Olympus' is not an IANA time zone "
        """(e.g. CONCORD_SOURCE_TIME_ZONES='{"lab-system": "America/New_York"}')""",
    ]
    assert sorted(_problems(IngestionSettings)) == sorted(expected)


def test_json_that_does_not_parse_is_named_with_an_example(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _clear_concord_env(monkeypatch)
    monkeypatch.setenv("CONCORD_DATABASE_URL", DSN)
    monkeypatch.setenv("CONCORD_SOURCE_TIME_ZONES", "{lab: Asia/Tokyo}")
    assert _problems(IngestionSettings) == [
        "CONCORD_SOURCE_TIME_ZONES='{lab: Asia/Tokyo}': not valid JSON "
        """(e.g. CONCORD_SOURCE_TIME_ZONES='{"lab-system": "America/New_York"}')"""
    ]
    monkeypatch.setenv("CONCORD_SOURCE_TIME_ZONES", '{"lab": 7}')
    assert _problems(IngestionSettings) == [
        "CONCORD_SOURCE_TIME_ZONES: at lab: not a string "
        """(e.g. CONCORD_SOURCE_TIME_ZONES='{"lab-system": "America/New_York"}')"""
    ]


def test_a_bad_value_in_the_stack_env_file_is_named_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _clear_concord_env(monkeypatch)
    env = tmp_path / "stack.env"
    env.write_text("CONCORD_MLLP_PORT=70000\nCONCORD_ENTERPRISE_ID_SYSTEMS=[oops\n")
    assert _problems(ClientSettings, env) == [
        "CONCORD_MLLP_PORT='70000': must be 65535 or less (e.g. CONCORD_MLLP_PORT=2575)"
    ]


def test_settings_that_go_together_are_named_together(monkeypatch: pytest.MonkeyPatch) -> None:
    _clear_concord_env(monkeypatch)
    monkeypatch.setenv("CONCORD_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    assert _problems(ClientSettings) == [
        "CONCORD_KAFKA_SECURITY_PROTOCOL=SASL_SSL needs CONCORD_KAFKA_SASL_MECHANISM and "
        "CONCORD_KAFKA_SASL_USERNAME (e.g. CONCORD_KAFKA_SASL_MECHANISM=SCRAM-SHA-512 "
        "CONCORD_KAFKA_SASL_USERNAME=concord)"
    ]


def test_a_secret_is_never_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    _clear_concord_env(monkeypatch)
    monkeypatch.setenv("CONCORD_DATABASE_URL", "postgresql://concord:s3cret@db/concord")
    monkeypatch.setenv("CONCORD_KAFKA_SASL_PASSWORD", "s3cret")
    monkeypatch.setenv("CONCORD_WEB_PORT", "s3cret")
    lines = _problems(AlertingSettings)
    assert lines == ["CONCORD_WEB_PORT='s3cret': not an integer (e.g. CONCORD_WEB_PORT=6066)"]
    # A secret's own errors say what is wrong, never its value.
    monkeypatch.delenv("CONCORD_WEB_PORT")
    with pytest.raises(ValidationError) as caught:
        AlertingSettings(database_url=12345)  # type: ignore[arg-type]
    (line,) = validation_problems(AlertingSettings, caught.value)
    assert line.startswith("CONCORD_DATABASE_URL: ") and "12345" not in line


def test_every_setting_has_an_example_for_its_error_message() -> None:
    classes: list[type[BaseSettings]] = [
        IngestionSettings,
        NormalizationSettings,
        ConflictsSettings,
        AlertingSettings,
        ClientSettings,
    ]
    for cls in classes:
        for field in cls.model_fields:
            assert setting_example(cls, field), f"{cls.__name__}.{field} has no example"
    assert setting_example(NormalizationSettings, "enterprise_id_systems") == (
        """CONCORD_ENTERPRISE_ID_SYSTEMS='["urn:concord:enterprise-patient-id"]'"""
    )
    # The DSN's example, shown in messages, has no password.
    assert ClientSettings.model_fields["database_url"].examples == [
        "postgresql://user@host:5432/concord"
    ]
