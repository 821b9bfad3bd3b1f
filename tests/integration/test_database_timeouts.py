"""The workers' pool bounds how long PostgreSQL work may hang (issue 15, item 5): a statement
times out, and a session frozen inside a transaction is ended by the server, releasing the
locks it held (the identity lock would otherwise stop every normalization worker)."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from concord.normalization.identity_store import IDENTITY_LOCK
from concord.runtime.db import pooled
from concord.runtime.faults import is_transient
from concord.stack.postgres import PostgresInfo

pytestmark = pytest.mark.integration


@pytest.mark.asyncio
async def test_a_statement_that_hangs_times_out_as_a_transient_failure(
    postgres: PostgresInfo,
) -> None:
    async with pooled(postgres.dsn, 1, command_timeout=0.5) as pool:
        with pytest.raises(TimeoutError) as hung:
            await pool.execute("SELECT pg_sleep(5)")
        assert is_transient(hung.value)
        assert await pool.fetchval("SELECT 1") == 1  # the pool goes on


@pytest.mark.asyncio
async def test_a_worker_frozen_inside_a_transaction_loses_the_identity_lock(
    postgres: PostgresInfo,
) -> None:
    async with pooled(postgres.dsn, 1, command_timeout=0.5) as frozen:
        conn = await frozen.acquire()
        transaction = conn.transaction()
        await transaction.start()
        await conn.execute("SELECT pg_advisory_xact_lock($1)", IDENTITY_LOCK)
        # The worker stops here (a pause, a stalled network) with the lock held.
        other = await asyncpg.connect(postgres.dsn)
        try:
            taken = await asyncio.wait_for(
                other.fetchval("SELECT pg_try_advisory_xact_lock($1)", IDENTITY_LOCK), 5
            )
            assert taken is False
            await asyncio.sleep(1.5)
            assert await other.fetchval("SELECT pg_try_advisory_xact_lock($1)", IDENTITY_LOCK)
        finally:
            await other.close()
            await frozen.release(conn, timeout=1)
