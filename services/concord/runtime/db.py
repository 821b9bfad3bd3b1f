"""PostgreSQL: connection pools and schema migrations (the SQL files in concord/migrations)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any

import asyncpg

_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    name text PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""
# Any fixed key works: it only serializes concurrent migrators of one database.
_MIGRATION_LOCK = 0x636F6E63


def unnest_columns(rows: Iterable[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Rows as the parallel arrays unnest() takes, so a batch is one statement; width gives the
    empty arrays that no rows still need, as the statement's parameter count is fixed."""
    columns = [list(column) for column in zip(*rows, strict=True)]
    return columns or [[] for _ in range(width)]


def migration_files() -> list[tuple[str, str]]:
    folder = resources.files("concord") / "migrations"
    return sorted(
        (entry.name, entry.read_text(encoding="utf-8"))
        for entry in folder.iterdir()
        if entry.name.endswith(".sql")
    )


async def apply_migrations(dsn: str) -> list[str]:
    """Apply the migrations not yet applied, each in its own transaction; return their names."""
    conn = await asyncpg.connect(dsn)
    applied: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
        await conn.execute(_MIGRATIONS_TABLE)
        done = {row["name"] for row in await conn.fetch("SELECT name FROM schema_migrations")}
        for name, sql in migration_files():
            if name in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations (name) VALUES ($1)", name)
            applied.append(name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
        await conn.close()
    return applied


@dataclass(frozen=True)
class SchemaSkew:
    """How a database's applied migrations differ from the ones this release ships."""

    # Shipped here, not applied: the database is older than the code (run the migrations).
    missing: tuple[str, ...]
    # Applied, not shipped here: a newer release migrated the database (a rollback).
    unknown: tuple[str, ...]


async def applied_migrations(conn: asyncpg.Connection) -> set[str]:
    """The migrations the database records as applied; none before its first migration."""
    if not await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL"):
        return set()
    return {row["name"] for row in await conn.fetch("SELECT name FROM schema_migrations")}


async def schema_skew(dsn: str, *, connect_timeout: float = 60.0) -> SchemaSkew:
    """Compare the database's applied migrations with this release's; `connect_timeout` bounds the
    connection attempt. Changes nothing."""
    conn = await asyncpg.connect(dsn, timeout=connect_timeout)
    try:
        applied = await applied_migrations(conn)
    finally:
        await conn.close()
    shipped = {name for name, _ in migration_files()}
    return SchemaSkew(tuple(sorted(shipped - applied)), tuple(sorted(applied - shipped)))


CLIENT_CHECK_MS = 2000


async def create_pool(
    dsn: str,
    size: int,
    *,
    command_timeout: float | None = None,
    application_name: str | None = None,
) -> asyncpg.Pool:
    """A pool whose statements fail with a timeout after `command_timeout` seconds (None:
    never), so a worker waiting on a lost server retries instead of hanging. The server ends
    a session left idle inside a transaction as long (a worker frozen while it held the
    identity lock would otherwise block every other normalization worker), and checks every
    CLIENT_CHECK_MS that the client is still there while a statement runs: a statement of a
    worker killed while it waited on a lock would otherwise run, and commit, once the lock is
    free. Its sessions carry `application_name`, so pg_stat_activity tells which stage holds
    or waits on what."""
    settings: dict[str, str] = {}
    if command_timeout is not None:
        settings["idle_in_transaction_session_timeout"] = str(int(command_timeout * 1000))
        settings["client_connection_check_interval"] = str(CLIENT_CHECK_MS)
    if application_name is not None:
        settings["application_name"] = application_name
    pool = await asyncpg.create_pool(
        dsn,
        min_size=1,
        max_size=size,
        command_timeout=command_timeout,
        server_settings=settings or None,
    )
    assert pool is not None  # create_pool returns None only when awaited lazily  # noqa: S101
    return pool


@asynccontextmanager
async def pooled(
    dsn: str, size: int, *, command_timeout: float | None = None
) -> AsyncIterator[asyncpg.Pool]:
    """A pool for one command's work: closed after it, also when the work fails."""
    pool = await create_pool(dsn, size, command_timeout=command_timeout)
    try:
        yield pool
    finally:
        await pool.close()
