"""PostgreSQL: connection pools and schema migrations (the SQL files in concord/migrations)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
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


async def create_pool(dsn: str, size: int, *, command_timeout: float | None = None) -> asyncpg.Pool:
    """A pool whose statements fail with a timeout after `command_timeout` seconds (None:
    never), so a worker waiting on a lost server retries instead of hanging."""
    pool = await asyncpg.create_pool(
        dsn, min_size=1, max_size=size, command_timeout=command_timeout
    )
    assert pool is not None  # create_pool returns None only when awaited lazily  # noqa: S101
    return pool


@asynccontextmanager
async def pooled(dsn: str, size: int) -> AsyncIterator[asyncpg.Pool]:
    """A pool for one command's work: closed after it, also when the work fails."""
    pool = await create_pool(dsn, size)
    try:
        yield pool
    finally:
        await pool.close()
