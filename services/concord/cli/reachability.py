"""The broker and PostgreSQL a command needs, checked before it starts and watched while it
runs: one line, not a traceback, when either cannot be reached."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import click

from concord.cli.options import (
    BROKER_SETTING,
    DATABASE_SETTING,
    database_dsn,
    kafka_client_options,
    stack_env,
)
from concord.config import ENVIRONMENT, ClientSettings, setting_source
from concord.runtime.connection_errors import (
    database_address,
    database_reason,
    host_port,
    probe,
)

# How long a command waits for the broker or PostgreSQL to answer before it says which one
# cannot be reached (a closed port is refused at once; a host that drops packets is not).
CONNECT_TIMEOUT_SECONDS = 10.0


Service = Literal["broker", "database"]


class Unreachable(Exception):
    """The broker or PostgreSQL did not answer; `reason` says how, naming no secret."""

    def __init__(self, service: Service, reason: str) -> None:
        self.service = service
        self.reason = reason
        super().__init__(f"{service}: {reason}")


@contextmanager
def connections(
    settings: ClientSettings, state_dir: Path, *, broker: bool = False, database: bool = False
) -> Iterator[None]:
    """Check first that the broker and/or PostgreSQL a command needs answer, each within
    CONNECT_TIMEOUT_SECONDS; then run the block. Either one not answering, before or during
    the block, ends the command with one line (exit 1): what could not be reached, at which
    host:port, and which setting said so, from the environment or the state folder's
    stack.env. Never the DSN or a password."""
    env_file = stack_env(state_dir)
    try:
        if broker:
            asyncio.run(check_broker(kafka_client_options(settings)))
        if database:
            asyncio.run(check_database(database_dsn(settings)))
        yield
    except Unreachable as error:
        raise click.ClickException(unreachable_line(error, settings, env_file)) from None
    except Exception as error:
        service = lost_service(error)
        if service is None:
            raise
        if service == "broker":
            reason = _probe_all(bootstrap_addresses(settings.bootstrap_servers))
        else:
            dsn = settings.database_url.get_secret_value() if settings.database_url else ""
            reason = database_reason(error, dsn)
        line = unreachable_line(Unreachable(service, reason), settings, env_file)
        raise click.ClickException(line) from None


def unreachable_line(error: Unreachable, settings: ClientSettings, env_file: Path | None) -> str:
    """`cannot reach the Kafka broker at HOST:PORT (CONCORD_BOOTSTRAP_SERVERS, from
    .concord/stack.env): connection refused`, or the same for PostgreSQL."""
    if error.service == "broker":
        what, where, setting = "the Kafka broker", settings.bootstrap_servers, BROKER_SETTING
    else:
        dsn = settings.database_url.get_secret_value() if settings.database_url else ""
        what, where, setting = "PostgreSQL", database_address(dsn), DATABASE_SETTING
    source = setting_source(setting, env_file)
    if source is None:
        origin = "the default"
    else:
        origin = "from the environment" if source[0] == ENVIRONMENT else f"from {source[0]}"
    return f"cannot reach {what} at {where} ({setting}, {origin}): {error.reason}"


def lost_service(error: BaseException) -> Service | None:
    """'broker' or 'database' when `error` is a connection to either failing after the check
    (the server went away), else None: the command's own error, not ours to rephrase."""
    from aiokafka.errors import KafkaConnectionError

    if isinstance(error, KafkaConnectionError):
        return "broker"
    import asyncpg

    if isinstance(error, asyncpg.ConnectionDoesNotExistError | asyncpg.CannotConnectNowError):
        return "database"
    if isinstance(error, OSError | TimeoutError) and _raised_in(error, "asyncpg"):
        return "database"
    return None


def _raised_in(error: BaseException, package: str) -> bool:
    trace = error.__traceback__
    while trace is not None:
        if str(trace.tb_frame.f_globals.get("__name__", "")).startswith(f"{package}."):
            return True
        trace = trace.tb_next
    return False


# --- the broker ---------------------------------------------------------------------------------


async def check_broker(options: dict[str, Any]) -> None:
    """Return once a bootstrap server answers a metadata request; Unreachable if none does
    within CONNECT_TIMEOUT_SECONDS."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaError

    seconds = CONNECT_TIMEOUT_SECONDS
    servers = bootstrap_addresses(str(options["bootstrap_servers"]))
    # Each server gets its share of the time; the bound of the whole is the backstop.
    per_server_ms = max(int(seconds * 1000 / max(len(servers), 1)), 100)
    admin = AIOKafkaAdminClient(**options, request_timeout_ms=per_server_ms)
    # aiokafka logs every failed attempt, and with no logging configured Python prints those
    # records to stderr: the one line below says it all.
    quiet = logging.NullHandler()
    logging.getLogger("aiokafka").addHandler(quiet)
    try:
        await asyncio.wait_for(admin.start(), seconds + 1.0)
    except TimeoutError:
        raise Unreachable("broker", f"no answer within {seconds:g} s") from None
    except (KafkaError, OSError):
        reasons = await asyncio.to_thread(_probe_all, servers)
        raise Unreachable("broker", reasons) from None
    finally:
        await admin.close()
        logging.getLogger("aiokafka").removeHandler(quiet)


def bootstrap_addresses(servers: str) -> list[tuple[str, int]]:
    """(host, port) of each comma-separated bootstrap server; 9092 where none is given."""
    addresses = []
    for server in filter(None, (s.strip() for s in servers.split(","))):
        host, port = host_port(server)
        addresses.append((host, 9092 if port is None else port))
    return addresses


def _probe_all(servers: list[tuple[str, int]]) -> str:
    no_kafka = "the port is open, but no Kafka broker answered there"
    reasons = [probe(host, port) or no_kafka for host, port in servers]
    if len(set(reasons)) == 1:
        return reasons[0]
    return ", ".join(f"{host}:{port} {r}" for (host, port), r in zip(servers, reasons, strict=True))


# --- PostgreSQL -----------------------------------------------------------------------------


async def check_database(dsn: str) -> None:
    """Return once PostgreSQL accepts a connection with this DSN; Unreachable if it does not
    within CONNECT_TIMEOUT_SECONDS."""
    import asyncpg

    seconds = CONNECT_TIMEOUT_SECONDS
    try:
        conn = await asyncpg.connect(dsn, timeout=seconds)
    except (
        OSError,
        TimeoutError,
        ValueError,
        asyncpg.PostgresError,
        asyncpg.InterfaceError,
    ) as error:
        raise Unreachable("database", database_reason(error, dsn, seconds)) from None
    await conn.close()
