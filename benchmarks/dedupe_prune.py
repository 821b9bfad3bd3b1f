"""How fast ingestion's de-duplication window is pruned, before and after issue 15 (item 7).

    .venv/bin/python benchmarks/dedupe_prune.py [--rows 1000000]

An embedded PostgreSQL (or CONCORD_DATABASE_URL's server, in a database of its own) with the
migrated schema; `ingested_versions` is filled with N rows older than the 30-day window and N
rows inside it, then vacuumed and analyzed. Then, on the same table filled again each time:

- **before**: the previous prune, one DELETE of at most 10,000 rows found again by primary
  key, run once every 600 s: its sustained rate is 10,000 / 600 rows/s whatever the statement
  costs. Its statement, looped until nothing is left, is timed too, to compare the SQL alone.
- **after**: the stage's prune as a worker runs it (`IngestionStage.on_tick` on
  `PostgresSeenVersions`): chunks of PRUNE_CHUNK_ROWS for at most PRUNE_BUDGET_SECONDS per
  tick, ticks back to back until the backlog is gone. Its sustained rate per worker is what one
  tick forgets per TICK_SECONDS, the loop's tick period.

Prints the figures; asserts nothing about them. The rows inside the window must all remain.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from concord.config import IngestionSettings
from concord.ingestion.app import PRUNE_BUDGET_SECONDS, PRUNE_CHUNK_ROWS, IngestionStage
from concord.ingestion.dedupe import PostgresSeenVersions
from concord.runtime.batch import TICK_SECONDS, Outbound
from concord.runtime.db import apply_migrations
from concord.stack.postgres import create_database, drop_database, start_postgres
from concord.stack.processes import stop_process

# The prune as it was before issue 15: one statement per PRUNE_EVERY_SECONDS (600 s).
OLD_PRUNE = (
    "DELETE FROM ingested_versions WHERE record_id IN (SELECT record_id FROM "
    "ingested_versions WHERE first_seen < $1 LIMIT 10000)"
)
OLD_CHUNK = 10_000
OLD_EVERY_SECONDS = 600.0


async def fill(pool: asyncpg.Pool, rows: int) -> None:
    await pool.execute("TRUNCATE ingested_versions")
    for prefix, outside in (("old", True), ("new", False)):
        await pool.execute(
            "INSERT INTO ingested_versions (record_id, emitted_id, source_system, first_seen) "
            "SELECT md5($2 || i), md5($2 || '-id' || i), 'bench', CASE WHEN $3 "
            "THEN now() - interval '40 days' + i * interval '1 ms' ELSE now() END "
            "FROM generate_series(1, $1) i",
            rows,
            prefix,
            outside,
        )
    await pool.execute("VACUUM ANALYZE ingested_versions")


async def window_start(pool: asyncpg.Pool) -> datetime:
    value = await pool.fetchval("SELECT now() - interval '30 days'")
    assert isinstance(value, datetime)
    return value


class Timed(PostgresSeenVersions):
    """The adapter, timing each prune statement."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        super().__init__(pool)
        self.statements: list[float] = []
        self.deleted = 0

    async def prune(self, before: datetime, limit: int) -> int:
        started = time.perf_counter()
        deleted = await super().prune(before, limit)
        self.statements.append(time.perf_counter() - started)
        self.deleted += deleted
        return deleted


async def before(pool: asyncpg.Pool, rows: int) -> None:
    await fill(pool, rows)
    cutoff = await window_start(pool)
    started = time.perf_counter()
    first = int((await pool.execute(OLD_PRUNE, cutoff)).split()[-1])
    one = time.perf_counter() - started
    total, statements = first, [one]
    while True:
        started = time.perf_counter()
        deleted = int((await pool.execute(OLD_PRUNE, cutoff)).split()[-1])
        statements.append(time.perf_counter() - started)
        total += deleted
        if deleted < OLD_CHUNK:
            break
    print(f"before: one prune every {OLD_EVERY_SECONDS:.0f} s deletes {first:,} rows in "
          f"{one * 1000:.0f} ms")  # fmt: skip
    print(f"  sustained, per worker: {OLD_CHUNK / OLD_EVERY_SECONDS:.1f} rows/s; a backlog of "
          f"{rows:,} rows takes {rows / OLD_CHUNK * OLD_EVERY_SECONDS / 3600:.1f} h")  # fmt: skip
    print(f"  its statement looped until done (SQL alone): {total:,} rows in "
          f"{sum(statements):.2f} s = {total / sum(statements):,.0f} rows/s, "
          f"longest statement {max(statements) * 1000:.0f} ms")  # fmt: skip


async def after(pool: asyncpg.Pool, rows: int) -> None:
    await fill(pool, rows)
    seen = Timed(pool)
    settings = IngestionSettings(database_url="postgresql://unused@127.0.0.1:1/none")
    stage = IngestionStage(settings, seen)
    ticks, busy, per_tick = 0, 0.0, 0
    while ticks == 0 or stage.prune_backlog:
        started, deleted = time.perf_counter(), seen.deleted
        await stage.on_tick(set(), Outbound(stage.stage))
        busy += time.perf_counter() - started
        ticks += 1
        per_tick = max(per_tick, seen.deleted - deleted)  # a tick that used its whole budget
    left = await pool.fetchval(
        "SELECT count(*) FROM ingested_versions WHERE first_seen < $1", await window_start(pool)
    )
    kept = await pool.fetchval("SELECT count(*) FROM ingested_versions")
    assert left == 0 and kept == rows, (left, kept)
    print(f"after: {rows:,} rows in {busy:.2f} s of pruning = {rows / busy:,.0f} rows/s, "
          f"{len(seen.statements)} statements of {PRUNE_CHUNK_ROWS:,} rows, longest "
          f"{max(seen.statements) * 1000:.0f} ms, median "
          f"{sorted(seen.statements)[len(seen.statements) // 2] * 1000:.0f} ms")  # fmt: skip
    print(f"  {ticks} ticks of at most {PRUNE_BUDGET_SECONDS} s; sustained, per worker "
          f"(one tick every {TICK_SECONDS:.0f} s): {per_tick / TICK_SECONDS:,.0f} rows/s "
          f"({per_tick:,.0f} rows a tick)")  # fmt: skip


async def main(rows: int) -> None:
    server = os.environ.get("CONCORD_DATABASE_URL")
    with tempfile.TemporaryDirectory() as state:
        if server:
            name = f"concord_bench_{uuid.uuid4().hex[:12]}"
            dsn, record = await create_database(server, name), None
            await apply_migrations(dsn)
        else:
            info = await start_postgres(Path(state))
            dsn, record = info.dsn, info.record
        try:
            pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
            try:
                print(f"{rows:,} rows older than the window, {rows:,} inside it "
                      f"({datetime.now(UTC):%Y-%m-%d})")  # fmt: skip
                await before(pool, rows)
                await after(pool, rows)
            finally:
                await pool.close()
        finally:
            if record is not None:
                stop_process(record)
            elif server:
                await drop_database(server, name)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    asyncio.run(main(args.rows))
    sys.exit(0)
