"""De-duplication: a (source, record, version) already emitted is counted, not emitted again.

The window lives in PostgreSQL, not in the worker: it survives restarts and rebalances, is
shared by every ingestion worker whatever partition a re-sent record lands on, and bounds
the worker's memory to one batch. A record is remembered only after Kafka acknowledged it,
so a crash in between re-emits it (downstream ids are deterministic) but never loses it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import asyncpg

from concord.ingestion.ports import SeenVersions
from concord.runtime.db import unnest_columns


class PostgresSeenVersions(SeenVersions):
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def unseen(self, record_ids: Sequence[str]) -> set[str]:
        if not record_ids:
            return set()
        rows = await self.pool.fetch(
            "SELECT record_id FROM ingested_versions WHERE record_id = ANY($1::text[])",
            list(record_ids),
        )
        return set(record_ids) - {row["record_id"] for row in rows}

    async def remember(self, records: Sequence[tuple[str, str]]) -> None:
        if not records:
            return
        await self.pool.execute(
            "INSERT INTO ingested_versions (record_id, source_system) "
            "SELECT * FROM unnest($1::text[], $2::text[]) ON CONFLICT DO NOTHING",
            *unnest_columns(records, 2),
        )

    async def prune(self, before: datetime) -> int:
        # In chunks, so a long-idle window never holds one huge delete.
        result = await self.pool.execute(
            "DELETE FROM ingested_versions WHERE record_id IN (SELECT record_id FROM "
            "ingested_versions WHERE first_seen < $1 LIMIT 10000)",
            before,
        )
        return int(result.split()[-1])
