"""A bad setting, a dead broker, a dead database: every command and worker says so in one line
on stderr and exits non-zero, without a traceback (issue 12, items 4 and 5).

The commands run as processes, as people run them: what reaches their terminal is all of
stderr, Python's fallback log output and warnings included."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import click
import pytest
from aiokafka.errors import KafkaConnectionError
from click.testing import CliRunner

from concord.cli import main, reachability
from concord.cli.options import client_settings
from concord.cli.reachability import (
    Unreachable,
    connections,
    database_address,
    unreachable_line,
)
from concord.stack.broker import BrokerInfo
from concord.stack.postgres import PostgresInfo
from concord.stack.processes import free_port

PASSWORD = "s3cret-pw"


def _env(**settings: str) -> dict[str, str]:
    """This process's environment without any CONCORD_* variable, plus `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("CONCORD_")}
    return {**env, **settings}


def _run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)


def _concord(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return _run([sys.executable, "-m", "concord.cli", *args], env)


def _assert_one_line(done: subprocess.CompletedProcess[str], line: str, code: int) -> None:
    assert done.stderr == line + "\n", done.stderr
    assert done.returncode == code
    assert "Traceback" not in done.stdout + done.stderr
    assert PASSWORD not in done.stdout + done.stderr


@pytest.fixture
def dead_stack(tmp_path: Path) -> tuple[Path, int, int]:
    """A state folder whose stack.env (and stack.json) name a broker and a database on closed
    loopback ports: (folder, broker port, database port)."""
    broker_port, database_port = free_port(), free_port()
    (tmp_path / "stack.env").write_text(
        f"CONCORD_BOOTSTRAP_SERVERS=127.0.0.1:{broker_port}\n"
        f"CONCORD_DATABASE_URL=postgresql://concord:{PASSWORD}@127.0.0.1:{database_port}/x\n"
    )
    (tmp_path / "stack.json").write_text(
        f'{{"bootstrap_servers": "127.0.0.1:{broker_port}", "database_url": "-", "processes": []}}'
    )
    return tmp_path, broker_port, database_port


def _commands(tmp_path: Path) -> dict[str, list[str]]:
    """Every command that talks to the broker or the database, with valid arguments."""
    record = tmp_path / "patient.json"
    record.write_text('{"resourceType": "Patient", "id": "p1"}')
    evaluation = tmp_path / "set"
    evaluation.mkdir()
    (evaluation / "answer_key.json").write_text('{"sources": []}')
    return {
        "publish": ["publish", "--source", "clinic-ehr", str(record)],
        "alerts list": ["alerts", "list"],
        "alerts follow": ["alerts", "follow"],
        "alerts resolve": ["alerts", "resolve", "A1", "--decision", "accept", "--by", "u1"],
        "topics create": ["topics", "create"],
        "deadletter list": ["deadletter", "list"],
        "deadletter replay": ["deadletter", "replay", "--all"],
        "warnings list": ["warnings", "list"],
        "evaluate": ["evaluate", str(evaluation)],
        "db migrate": ["db", "migrate"],
    }


BROKER_COMMANDS = [
    "publish",
    "alerts follow",
    "alerts resolve",
    "topics create",
    "deadletter list",
    "deadletter replay",
    "warnings list",
    "evaluate",
]
DATABASE_COMMANDS = ["alerts list", "alerts resolve", "evaluate", "db migrate"]


# --- item 5: the broker or PostgreSQL cannot be reached ---------------------------------------


@pytest.mark.parametrize("command", BROKER_COMMANDS)
def test_a_dead_broker_is_one_line_naming_it_and_the_setting(
    command: str, dead_stack: tuple[Path, int, int]
) -> None:
    state, broker_port, _ = dead_stack
    argv = [*_commands(state)[command], "--state-dir", str(state)]
    started = time.monotonic()
    done = _concord(*argv, env=_env())
    _assert_one_line(
        done,
        f"Error: cannot reach the Kafka broker at 127.0.0.1:{broker_port} "
        f"(CONCORD_BOOTSTRAP_SERVERS, from {state}/stack.env): connection refused",
        1,
    )
    assert done.stdout == ""
    assert time.monotonic() - started < 15


@pytest.mark.integration
@pytest.mark.parametrize("command", DATABASE_COMMANDS)
def test_a_dead_database_is_one_line_naming_it_and_the_setting(
    command: str, dead_stack: tuple[Path, int, int], broker: BrokerInfo
) -> None:
    """The broker is up (resolve and evaluate check it first); the database is not. The
    variables win over stack.env, and the message says they came from the environment."""
    state, _, _ = dead_stack
    port = free_port()
    env = _env(
        CONCORD_BOOTSTRAP_SERVERS=broker.bootstrap_servers,
        CONCORD_DATABASE_URL=f"postgresql://concord:{PASSWORD}@127.0.0.1:{port}/concord",
    )
    done = _concord(*_commands(state)[command], "--state-dir", str(state), env=env)
    _assert_one_line(
        done,
        f"Error: cannot reach PostgreSQL at 127.0.0.1:{port} "
        "(CONCORD_DATABASE_URL, from the environment): connection refused",
        1,
    )


@pytest.mark.integration
def test_a_database_the_server_does_not_have_is_named_by_the_server(
    postgres: PostgresInfo, tmp_path: Path
) -> None:
    parts = urlsplit(postgres.dsn)
    missing = urlunsplit(parts._replace(path="/concord_no_such_database"))
    done = _concord(
        "alerts", "list", "--state-dir", str(tmp_path), env=_env(CONCORD_DATABASE_URL=missing)
    )
    _assert_one_line(
        done,
        f"Error: cannot reach PostgreSQL at {database_address(postgres.dsn)} "
        '(CONCORD_DATABASE_URL, from the environment): database "concord_no_such_database" '
        "does not exist",
        1,
    )
    assert parts.password is None or parts.password not in done.stderr


def test_unknown_hosts_are_named_as_such(tmp_path: Path) -> None:
    env = _env(
        CONCORD_BOOTSTRAP_SERVERS="broker.invalid:9092",
        CONCORD_DATABASE_URL=f"postgresql://concord:{PASSWORD}@db.invalid/concord",
    )
    done = _concord("topics", "create", "--state-dir", str(tmp_path), env=env)
    _assert_one_line(
        done,
        "Error: cannot reach the Kafka broker at broker.invalid:9092 "
        "(CONCORD_BOOTSTRAP_SERVERS, from the environment): unknown host",
        1,
    )
    done = _concord("alerts", "list", "--state-dir", str(tmp_path), env=env)
    _assert_one_line(
        done,
        "Error: cannot reach PostgreSQL at db.invalid:5432 "
        "(CONCORD_DATABASE_URL, from the environment): unknown host",
        1,
    )


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that accepts connections (the kernel does) and never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        yield int(server.getsockname()[1])


def test_a_server_that_never_answers_fails_within_the_timeout(
    silent_port: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reachability, "CONNECT_TIMEOUT_SECONDS", 1.0)
    for key in list(os.environ):
        if key.upper().startswith("CONCORD_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("CONCORD_BOOTSTRAP_SERVERS", f"127.0.0.1:{silent_port}")
    monkeypatch.setenv(
        "CONCORD_DATABASE_URL", f"postgresql://concord:{PASSWORD}@127.0.0.1:{silent_port}/c"
    )
    state = ["--state-dir", str(tmp_path)]

    started = time.monotonic()
    done = CliRunner().invoke(main, ["deadletter", "list", *state])
    assert done.exit_code == 1
    assert done.output == (
        f"Error: cannot reach the Kafka broker at 127.0.0.1:{silent_port} (CONCORD_BOOTSTRAP_"
        "SERVERS, from the environment): the port is open, but no Kafka broker answered there\n"
    )
    done = CliRunner().invoke(main, ["alerts", "list", *state])
    assert done.exit_code == 1
    assert done.output == (
        f"Error: cannot reach PostgreSQL at 127.0.0.1:{silent_port} "
        "(CONCORD_DATABASE_URL, from the environment): no answer within 1 s\n"
    )
    assert time.monotonic() - started < 8


def test_a_server_lost_during_a_command_is_one_line_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the check passed: the broker or the database going away mid-command."""
    for key in list(os.environ):
        if key.upper().startswith("CONCORD_"):
            monkeypatch.delenv(key)
    port = free_port()
    monkeypatch.setenv("CONCORD_BOOTSTRAP_SERVERS", f"127.0.0.1:{port}")
    monkeypatch.setenv("CONCORD_DATABASE_URL", f"postgresql://c:{PASSWORD}@127.0.0.1:{port}/c")
    settings = client_settings(tmp_path)

    with pytest.raises(click.ClickException) as caught, connections(settings, tmp_path):
        raise KafkaConnectionError("Unable to bootstrap from [('127.0.0.1', 1)]")
    assert caught.value.message == (
        f"cannot reach the Kafka broker at 127.0.0.1:{port} "
        "(CONCORD_BOOTSTRAP_SERVERS, from the environment): connection refused"
    )
    with pytest.raises(click.ClickException) as caught, connections(settings, tmp_path):
        raise asyncpg.ConnectionDoesNotExistError("closed in the middle of operation")
    assert caught.value.message == (
        f"cannot reach PostgreSQL at 127.0.0.1:{port} "
        "(CONCORD_DATABASE_URL, from the environment): the connection was lost"
    )
    # The command's own errors are its own to report.
    with pytest.raises(ValueError, match="not ours"), connections(settings, tmp_path):
        raise ValueError("not ours")

    monkeypatch.delenv("CONCORD_BOOTSTRAP_SERVERS")
    line = unreachable_line(
        Unreachable("broker", "connection refused"), client_settings(tmp_path), None
    )
    assert line == (
        "cannot reach the Kafka broker at 127.0.0.1:9092 "
        "(CONCORD_BOOTSTRAP_SERVERS, the default): connection refused"
    )


# --- item 4: a bad setting -------------------------------------------------------------------


def test_a_bad_setting_stops_a_command_with_one_line(tmp_path: Path) -> None:
    record = tmp_path / "patient.json"
    record.write_text('{"resourceType": "Patient", "id": "p1"}')
    done = _concord(
        "publish", "--source", "clinic-ehr", str(record), "--state-dir", str(tmp_path),
        env=_env(CONCORD_MLLP_PORT="abc"),
    )  # fmt: skip
    _assert_one_line(
        done, "Error: CONCORD_MLLP_PORT='abc': not an integer (e.g. CONCORD_MLLP_PORT=2575)", 2
    )

    (tmp_path / "stack.env").write_text("CONCORD_KAFKA_REPLICATION_FACTOR=0\n")
    done = _concord("topics", "create", "--state-dir", str(tmp_path), env=_env())
    _assert_one_line(
        done,
        "Error: CONCORD_KAFKA_REPLICATION_FACTOR='0': must be 1 or more "
        "(e.g. CONCORD_KAFKA_REPLICATION_FACTOR=1)",
        2,
    )


def test_a_missing_database_setting_is_one_line(tmp_path: Path) -> None:
    done = _concord("alerts", "list", "--state-dir", str(tmp_path), env=_env())
    _assert_one_line(
        done,
        "Error: CONCORD_DATABASE_URL: not set (e.g. "
        "CONCORD_DATABASE_URL=postgresql://user@host:5432/concord); `concord stack up` writes "
        "it to the state folder's stack.env",
        2,
    )


def _worker(service: str, **settings: str) -> subprocess.CompletedProcess[str]:
    return _run([sys.executable, "-m", "concord.worker", service], _env(**settings))


def test_a_worker_with_a_bad_port_and_no_database_names_both_and_exits_2() -> None:
    done = _worker("ingestion", CONCORD_WEB_PORT="abc")
    assert done.stderr.splitlines() == [
        "the ingestion worker does not start: CONCORD_WEB_PORT='abc': not an integer "
        "(e.g. CONCORD_WEB_PORT=6066)",
        "the ingestion worker does not start: CONCORD_DATABASE_URL: not set "
        "(e.g. CONCORD_DATABASE_URL=postgresql://user@host:5432/concord)",
    ]
    assert done.returncode == 2
    assert "Traceback" not in done.stdout + done.stderr


def test_a_worker_with_time_zones_that_are_not_json_says_so() -> None:
    done = _worker(
        "ingestion",
        CONCORD_DATABASE_URL=f"postgresql://concord:{PASSWORD}@127.0.0.1:5432/concord",
        CONCORD_SOURCE_TIME_ZONES="{lab-system: America/New_York}",
    )
    _assert_one_line(
        done,
        "the ingestion worker does not start: CONCORD_SOURCE_TIME_ZONES='{lab-system: "
        "America/New_York}': not valid JSON "
        """(e.g. CONCORD_SOURCE_TIME_ZONES='{"lab-system": "America/New_York"}')""",
        2,
    )


def test_a_worker_never_echoes_the_database_password() -> None:
    done = _worker(
        "alerting",
        CONCORD_DATABASE_URL=f"postgresql://concord:{PASSWORD}@127.0.0.1:5432/concord",
        CONCORD_MAX_BATCH_RECORDS="0",
    )
    _assert_one_line(
        done,
        "the alerting worker does not start: CONCORD_MAX_BATCH_RECORDS='0': must be 1 or more "
        "(e.g. CONCORD_MAX_BATCH_RECORDS=1000)",
        2,
    )
