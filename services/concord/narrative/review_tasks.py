"""Text review tasks in PostgreSQL (migration 0020): the adapter of `ports.TextReviews`."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from concord.narrative.ports import TextReviews
from concord.narrative.reading import Candidate
from concord.runtime.db import unnest_columns

_ADD = """
INSERT INTO text_review_tasks (task_id, patient_id, subject, attribute, value, confidence,
                               assertion, document_id, record_id, source_system,
                               effective_time, evidence)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                     $6::float8[], $7::text[], $8::text[], $9::text[], $10::text[],
                     $11::timestamptz[], $12::jsonb[])
ON CONFLICT (task_id) DO NOTHING
"""


class PostgresTextReviews(TextReviews):
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def add(self, candidates: Sequence[Candidate]) -> None:
        # One row per task: an upsert may not touch a row twice in one statement.
        unique = {c.task_id: c for c in candidates}
        if not unique:
            return
        rows = [
            (c.task_id, c.patient_id, c.document.subject, c.attribute, c.value, c.confidence,
             c.assertion, c.document.document_id, c.document.record_id,
             c.provenance.source_system, c.document.authored_time,
             c.provenance.model_dump_json())
            for c in unique.values()
        ]  # fmt: skip
        async with self.pool.acquire() as connection:
            await connection.execute(_ADD, *unnest_columns(rows, 12))

    async def reachable(self) -> None:
        async with self.pool.acquire() as connection:
            await connection.fetchval("SELECT 1")
