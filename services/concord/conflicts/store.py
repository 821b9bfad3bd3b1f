"""PostgreSQL is the conflicts service's state of record; the worker's memory is a cache.

(Faust tables would recover from a changelog, which on the local broker silently drops the
last batch: docs/architecture.md.) Writes are batched: one transaction per consumed batch
holds the assertions, the conflict states and the outbox rows, so they always agree.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import asyncpg
import orjson

from concord.conflicts.rules import AttributeState, ConflictState
from concord.events.models import Assertion, Provenance
from concord.runtime.batch import OutboundRecord
from concord.runtime.outbox import Outbox

Key = tuple[str, str]  # (patient_id, attribute)

_LOAD_ASSERTIONS = """
SELECT a.* FROM assertions a
JOIN unnest($1::text[], $2::text[]) AS k(patient_id, attribute)
  ON a.patient_id = k.patient_id AND a.attribute = k.attribute
"""
_LOAD_CONFLICTS = """
SELECT c.* FROM conflict_state c
JOIN unnest($1::text[], $2::text[]) AS k(patient_id, attribute)
  ON c.patient_id = k.patient_id AND c.attribute = k.attribute
"""
_UPSERT_ASSERTIONS = """
INSERT INTO assertions (patient_id, attribute, source_system, kafka_partition, attribute_class,
                        value, display, status, fact_id, event_time, received_time, provenance)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::text[], $6::text[],
                     $7::text[], $8::text[], $9::text[], $10::timestamptz[], $11::timestamptz[],
                     $12::jsonb[])
ON CONFLICT (patient_id, attribute, source_system) DO UPDATE SET
    kafka_partition = excluded.kafka_partition, attribute_class = excluded.attribute_class,
    value = excluded.value, display = excluded.display, status = excluded.status,
    fact_id = excluded.fact_id, event_time = excluded.event_time,
    received_time = excluded.received_time, provenance = excluded.provenance
WHERE assertions.event_time <= excluded.event_time
"""
_UPSERT_CONFLICTS = """
INSERT INTO conflict_state (patient_id, attribute, conflict_id, revision, status,
                            assertions_digest, kafka_partition, opened_at, updated_at)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::text[], $6::text[],
                     $7::int[], $8::timestamptz[], $9::timestamptz[])
ON CONFLICT (patient_id, attribute) DO UPDATE SET
    conflict_id = excluded.conflict_id, revision = excluded.revision, status = excluded.status,
    assertions_digest = excluded.assertions_digest, kafka_partition = excluded.kafka_partition,
    opened_at = excluded.opened_at, updated_at = excluded.updated_at
"""


_ATTRIBUTES_OF = """
SELECT DISTINCT patient_id, attribute, attribute_class FROM assertions
WHERE patient_id = ANY($1::text[])
"""


class ConflictStore:
    def __init__(self, pool: asyncpg.Pool, outbox: Outbox) -> None:
        self.pool = pool
        self.outbox = outbox

    async def attributes_of(self, patient_ids: Sequence[str]) -> dict[Key, str]:
        """Every attribute any source asserted of these patients, with its class."""
        rows = await self.pool.fetch(_ATTRIBUTES_OF, list(patient_ids))
        return {(row["patient_id"], row["attribute"]): row["attribute_class"] for row in rows}

    async def load(self, keys: Sequence[Key], classes: dict[Key, str]) -> dict[Key, AttributeState]:
        """The stored state of each key; a fresh, empty state for keys never seen."""
        patients = [k[0] for k in keys]
        attributes = [k[1] for k in keys]
        async with self.pool.acquire() as conn:
            assertion_rows = await conn.fetch(_LOAD_ASSERTIONS, patients, attributes)
            conflict_rows = await conn.fetch(_LOAD_CONFLICTS, patients, attributes)
        states = {
            key: AttributeState(key[0], key[1], classes[key])  # type: ignore[arg-type]
            for key in keys
        }
        for row in assertion_rows:
            states[(row["patient_id"], row["attribute"])].assertions[row["source_system"]] = (
                Assertion(
                    source_system=row["source_system"],
                    value=row["value"],
                    display=row["display"],
                    status=row["status"],
                    fact_id=row["fact_id"],
                    provenance=Provenance.model_validate_json(row["provenance"]),
                )
            )
        for row in conflict_rows:
            states[(row["patient_id"], row["attribute"])].conflict = ConflictState(
                conflict_id=row["conflict_id"],
                revision=row["revision"],
                status=row["status"],
                digest=row["assertions_digest"],
                opened_at=row["opened_at"],
                updated_at=row["updated_at"],
            )
        return states

    async def save(
        self,
        assertions: Iterable[tuple[AttributeState, str, int]],
        conflicts: Iterable[tuple[AttributeState, int]],
        events: Sequence[OutboundRecord],
    ) -> None:
        """One transaction: changed assertions (state, source, partition), changed conflict
        states (state, partition), and the outbox rows of the events they caused."""
        a_rows = [(st, st.assertions[source], partition) for st, source, partition in assertions]
        c_rows: list[tuple[AttributeState, ConflictState, int]] = []
        for st, partition in conflicts:
            if st.conflict is not None:
                c_rows.append((st, st.conflict, partition))
        async with self.pool.acquire() as conn, conn.transaction():
            if a_rows:
                await conn.execute(
                    _UPSERT_ASSERTIONS,
                    [st.patient_id for st, _, _ in a_rows],
                    [st.attribute for st, _, _ in a_rows],
                    [a.source_system for _, a, _ in a_rows],
                    [p for _, _, p in a_rows],
                    [st.attribute_class for st, _, _ in a_rows],
                    [a.value for _, a, _ in a_rows],
                    [a.display for _, a, _ in a_rows],
                    [a.status for _, a, _ in a_rows],
                    [a.fact_id for _, a, _ in a_rows],
                    [a.provenance.event_time for _, a, _ in a_rows],
                    [a.provenance.received_time for _, a, _ in a_rows],
                    [
                        orjson.dumps(a.provenance.model_dump(mode="json")).decode()
                        for _, a, _ in a_rows
                    ],
                )
            if c_rows:
                await conn.execute(
                    _UPSERT_CONFLICTS,
                    [st.patient_id for st, _, _ in c_rows],
                    [st.attribute for st, _, _ in c_rows],
                    [c.conflict_id for _, c, _ in c_rows],
                    [c.revision for _, c, _ in c_rows],
                    [c.status for _, c, _ in c_rows],
                    [c.digest for _, c, _ in c_rows],
                    [p for _, _, p in c_rows],
                    [c.opened_at for _, c, _ in c_rows],
                    [c.updated_at for _, c, _ in c_rows],
                )
            await self.outbox.write(conn, events)
