"""Shared fixtures: a real broker and a real PostgreSQL, started once per test session.

Both fixtures are synchronous and run the async start with `asyncio.run`, so they work with
any event-loop scope the tests choose. Servers listen on free loopback ports and keep their
files in pytest's temporary directory.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest
import pytest_asyncio

from concord.runtime.db import apply_migrations
from concord.stack.broker import BrokerInfo, start_broker
from concord.stack.postgres import PostgresInfo, create_database, drop_database, start_postgres
from concord.stack.processes import stop_process


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerInfo]:
    """Tansu with every Concord topic created; `.bootstrap_servers` is "127.0.0.1:PORT".

    Its storage is memory: nothing is shared with another session or survives this one.
    Tests share it, so each should use its own consumer group ids."""
    info = asyncio.run(start_broker(tmp_path_factory.mktemp("broker")))
    yield info
    stop_process(info.record)


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresInfo]:
    """A migrated database; `.dsn` connects to it.

    With CONCORD_DATABASE_URL set, a fresh, uniquely named database on that server (dropped at
    the end); otherwise the embedded PostgreSQL in a temporary directory."""
    server_dsn = os.environ.get("CONCORD_DATABASE_URL")
    if server_dsn:
        name = f"concord_test_{uuid.uuid4().hex[:12]}"
        dsn = asyncio.run(create_database(server_dsn, name))
        asyncio.run(apply_migrations(dsn))
        yield PostgresInfo(dsn=dsn, record=None)
        asyncio.run(drop_database(server_dsn, name))
        return
    info = asyncio.run(start_postgres(tmp_path_factory.mktemp("postgres")))
    assert info.record is not None
    yield info
    stop_process(info.record)


@pytest_asyncio.fixture
async def pool(postgres: PostgresInfo) -> AsyncIterator[asyncpg.Pool]:
    """A connection pool on the session's database, for one test."""
    pool = await asyncpg.create_pool(postgres.dsn, min_size=1, max_size=4)
    assert pool is not None
    yield pool
    await pool.close()
