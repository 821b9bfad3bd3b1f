"""De-duplication: a version already emitted with the same content is counted, not emitted again.

The window lives in PostgreSQL, not in the worker: it survives restarts and rebalances, is
shared by every ingestion worker whatever partition a re-sent record lands on, and bounds
the worker's memory to one batch. A record is remembered only after Kafka acknowledged it,
so a crash in between re-emits it (downstream ids are deterministic) but never loses it.

A row is a version key (source, record, version, operation) with the record id it was emitted
under, which covers the content: a key re-used for other content is one more row, not a repeat.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import asyncpg

from concord.ingestion.ports import SeenVersions
from concord.runtime.db import unnest_columns

# By physical row id, of rows found oldest first through the first_seen index: on a million
# rows, ~15 times the rows per second of a delete that finds them again by primary key
# (benchmarks/dedupe_prune.py). SKIP LOCKED lets several workers prune at once, each its own
# rows, instead of queueing on each other's.
_PRUNE = """
DELETE FROM ingested_versions WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM ingested_versions WHERE first_seen < $1
    ORDER BY first_seen LIMIT $2 FOR UPDATE SKIP LOCKED
))
"""


class PostgresSeenVersions(SeenVersions):
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def emitted(self, version_keys: Sequence[str]) -> dict[str, set[str]]:
        if not version_keys:
            return {}
        rows = await self.pool.fetch(
            "SELECT record_id, emitted_id FROM ingested_versions WHERE record_id = ANY($1::text[])",
            list(version_keys),
        )
        found: dict[str, set[str]] = {}
        for row in rows:
            found.setdefault(row["record_id"], set()).add(row["emitted_id"])
        return found

    async def remember(self, records: Sequence[tuple[str, str, str]]) -> None:
        if not records:
            return
        await self.pool.execute(
            "INSERT INTO ingested_versions (record_id, emitted_id, source_system) "
            "SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) ON CONFLICT DO NOTHING",
            *unnest_columns(records, 3),
        )

    async def prune(self, before: datetime, limit: int) -> int:
        result = await self.pool.execute(_PRUNE, before, limit)
        return int(result.split()[-1])
