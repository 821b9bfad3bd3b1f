"""What each source record's last upsert asserted, so that its delete can withdraw it
(migration 0008): the PostgreSQL adapter of the port `ports.RecordFacts`, and an in-memory one
for tests.

One row per source record (not per fact): a record's upsert replaces everything remembered of
it at once, and a delete asks for a record, never for a fact; a record asserts a handful of
fact keys, kept as one jsonb array. Each batch is one statement (unnest), so it is atomic
without an explicit transaction; an upsert older (by event time) than the remembered one
changes nothing, whatever order the versions arrive in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import asyncpg
import orjson

from concord.normalization.facts.withdrawals import (
    RecordKey,
    Remembered,
    RememberedFact,
    latest,
)
from concord.normalization.ports import RecordFacts
from concord.runtime.db import unnest_columns

_REMEMBER = """
INSERT INTO record_facts (source, source_record_id, patient_id, subject, event_time, facts)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[],
                     $6::jsonb[])
ON CONFLICT (source, source_record_id) DO UPDATE SET
    patient_id = excluded.patient_id, subject = excluded.subject,
    event_time = excluded.event_time, facts = excluded.facts, updated_at = now()
WHERE record_facts.event_time <= excluded.event_time
"""
# With whom the identity index links the record's subject now: a merge since (the Patient
# that placed a provisional id, an A40) moved the record's assertions to the survivor.
_RECALL = """
SELECT r.source, r.source_record_id, r.patient_id, r.subject, r.event_time, r.facts,
       l.enterprise_id AS linked_patient_id
FROM record_facts r
JOIN unnest($1::text[], $2::text[]) AS wanted(source, source_record_id)
  ON r.source = wanted.source AND r.source_record_id = wanted.source_record_id
LEFT JOIN identity_links l ON l.source = r.source AND l.local_id = r.subject
"""


class PostgresRecordFacts(RecordFacts):
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def remember(self, batch: Sequence[Remembered]) -> None:
        # An upsert may not touch a row twice in one statement: one memory per record.
        rows = list(latest(batch).values())
        if not rows:
            return
        columns = (
            (*m.key, m.patient_id, m.subject, m.event_time, _facts_document(m.facts)) for m in rows
        )
        await self.pool.execute(_REMEMBER, *unnest_columns(columns, 6))

    async def recall(self, keys: Sequence[RecordKey]) -> dict[RecordKey, Remembered]:
        wanted = sorted(set(keys))
        if not wanted:
            return {}
        rows = await self.pool.fetch(_RECALL, [k[0] for k in wanted], [k[1] for k in wanted])
        return {(row["source"], row["source_record_id"]): _remembered(row) for row in rows}


class InMemoryRecordFacts(RecordFacts):
    """The same contract in a dict. `links`: the identity index's (source, local id) →
    enterprise id, as far as a test needs it."""

    def __init__(self, links: dict[tuple[str, str], str] | None = None) -> None:
        self.memories: dict[RecordKey, Remembered] = {}
        self.links = links if links is not None else {}

    async def remember(self, batch: Sequence[Remembered]) -> None:
        self.memories = latest([*self.memories.values(), *batch])

    async def recall(self, keys: Sequence[RecordKey]) -> dict[RecordKey, Remembered]:
        found = {}
        for key in set(keys):
            memory = self.memories.get(key)
            if memory is None:
                continue
            linked = self.links.get((key[0], memory.subject)) if memory.subject else None
            found[key] = replace(memory, linked_patient_id=linked)
        return found


def _facts_document(facts: Sequence[RememberedFact]) -> str:
    return orjson.dumps(
        [{"attribute": f.attribute, "attribute_class": f.attribute_class} for f in facts]
    ).decode()


def _remembered(row: Any) -> Remembered:
    return Remembered(
        key=(row["source"], row["source_record_id"]),
        patient_id=row["patient_id"],
        subject=row["subject"],
        event_time=row["event_time"],
        facts=tuple(
            RememberedFact(f["attribute"], f["attribute_class"]) for f in orjson.loads(row["facts"])
        ),
        linked_patient_id=row["linked_patient_id"],
    )
