"""Why the broker or PostgreSQL could not be used, in words that name no secret (never the
DSN: it holds the password). Shared by the commands' one-line errors (cli/reachability.py) and
the worker's start-up check (runtime/startup.py), so both say the same thing."""

from __future__ import annotations

import socket
from urllib.parse import parse_qs, urlsplit

from concord.config import EXAMPLE_DSN, ClientSettings, env_name

DATABASE_SETTING = env_name(ClientSettings, "database_url")
# Finding out why a server did not answer: connecting to its host:port ourselves.
PROBE_TIMEOUT_SECONDS = 3.0


def probe(host: str, port: int, timeout: float = PROBE_TIMEOUT_SECONDS) -> str | None:
    """Why a TCP connection to host:port fails, or None when it succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as error:
        return os_reason(error)


def os_reason(error: OSError) -> str:
    """A socket error in words: "connection refused", "unknown host", "timed out"..."""
    if isinstance(error, socket.gaierror):
        return "unknown host"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, TimeoutError):
        return "timed out"
    text = error.strerror or str(error) or type(error).__name__
    return text[:1].lower() + text[1:]


def database_reason(error: BaseException, dsn: str, seconds: float | None = None) -> str:
    """Why PostgreSQL could not be used, without the DSN (it holds the password)."""
    import asyncpg

    if isinstance(error, TimeoutError):
        return f"no answer within {seconds:g} s" if seconds else "timed out"
    if isinstance(error, asyncpg.ConnectionDoesNotExistError):
        return "the connection was lost"
    if isinstance(error, asyncpg.PostgresError):
        # The server's own words: 'database "x" does not exist', 'password authentication
        # failed for user "y"'; they name no password.
        return str(error)
    if isinstance(error, asyncpg.InterfaceError | ValueError):
        # asyncpg's words may quote the DSN, password included.
        return f"{DATABASE_SETTING} is not a valid DSN (e.g. {EXAMPLE_DSN})"
    if isinstance(error, ConnectionRefusedError | socket.gaierror):
        return os_reason(error)
    if isinstance(error, OSError):
        # Several addresses (localhost: ::1 and 127.0.0.1) fail as one "Multiple exceptions"
        # error: connecting to the first says why.
        address = database_address(dsn)
        host, port = host_port(address)
        found = probe(host, port) if port is not None and "," not in address else None
        return found or os_reason(error)
    return type(error).__name__


def database_address(dsn: str) -> str:
    """HOST:PORT of a DSN (or its hosts, or its Unix socket folder), never its user, password
    or options."""
    try:
        parts = urlsplit(dsn)
        query = parse_qs(parts.query)
    except ValueError:
        return "the host in the DSN"
    hosts = parts.netloc.rpartition("@")[2] or query.get("host", [""])[0] or "localhost"
    if hosts.startswith("/") or "," in hosts:
        return hosts
    host, port = host_port(hosts)
    if port is not None:
        return hosts
    if ":" in host and not hosts.startswith("["):
        return hosts  # not HOST:PORT, as the error says
    given = query.get("port", [""])[0]
    return f"{hosts}:{given if given.isdigit() else 5432}"


def host_port(text: str) -> tuple[str, int | None]:
    """Host and port of "host", "host:port", "[v6]" or "[v6]:port" (None: no port given)."""
    host, sep, port = text.rpartition(":")
    if sep and port.isdigit() and (":" not in host or host.startswith("[")):
        return host.strip("[]"), int(port)
    return text.strip("[]"), None
