"""PostgreSQL is the conflicts service's state of record; the worker's memory is a cache.

(Faust tables would recover from a changelog, which on the local broker silently drops the
last batch: docs/architecture.md.) Writes are batched: one transaction per consumed batch
holds the assertions, the conflict states and the outbox rows, so they always agree.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import cast

import asyncpg
import orjson

from concord.conflicts.beliefs import record_key
from concord.conflicts.ports import ConflictStorePort, Key, Timer
from concord.conflicts.rules import (
    AttributeState,
    ConflictState,
    HistoricFact,
    Hold,
    as_assertion,
)
from concord.conflicts.state_coding import StateNames, fact_id_of, fact_key
from concord.events.models import Assertion, AttributeClass, ClinicalFact, Provenance
from concord.runtime.batch import OutboundRecord
from concord.runtime.db import unnest_columns
from concord.runtime.leases import PartitionLeases
from concord.runtime.outbox import Outbox

# A fact as the history keeps it (h), its provenance included: an assertion row whose
# `assertion` is NULL is exactly that fact (migration 0019). Names are ids of state_names, and
# fact ids keys (migration 0021, state_coding).
_FACT = """
h.fact_key AS h_fact_key, h.fact_name AS h_fact_name, h.source_id AS h_source_id, h.value,
h.display, h.status_id, h.unit, h.effective_time, h.event_time AS h_event_time, h.received_time,
h.record_id, h.record_version, h.raw_topic_id, h.raw_partition, h.raw_offset, h.payload_sha256,
h.payload_digest, h.raw_location, h.event_time_basis_id, h.provenance_extra
"""
# The name ids a _FACT row holds.
_FACT_NAMES = ("h_source_id", "status_id", "raw_topic_id", "event_time_basis_id")
# A patient's assertions are rows of patient_assertions, one per block of ATTRIBUTE_BLOCK
# attribute ids (migration 0023): entry i (from 1) is names[3i-2] (attribute), names[3i-1]
# (source), names[3i] (class), fact_keys[i] and event_times[i]; an entry that is not exactly
# its recorded fact, or keeps the source's records, has a document under
# "<attribute>:<source>" in `documents`. The block is the attribute id divided by 64, as
# migration 0023 converted the rows: changing it needs a migration that regroups them.
ATTRIBUTE_BLOCK = 64
_ENTRIES = """
CROSS JOIN LATERAL unnest(p.fact_keys, p.event_times) WITH ORDINALITY AS e(fact_key, event_time, n)
CROSS JOIN LATERAL (
    SELECT p.names[3 * e.n - 2] AS attribute_id, p.names[3 * e.n - 1] AS source_id,
           p.names[3 * e.n] AS attribute_class_id
) AS c
"""
_LOAD_ASSERTIONS = f"""
SELECT p.patient_id, c.attribute_id, c.source_id, d.document, {_FACT}
FROM patient_assertions p
JOIN unnest($1::text[], $2::int[]) AS k(patient_id, attribute_id)
  ON p.patient_id = k.patient_id AND p.attribute_block = k.attribute_id / {ATTRIBUTE_BLOCK}
{_ENTRIES}
CROSS JOIN LATERAL (
    SELECT p.documents -> (c.attribute_id || ':' || c.source_id) AS document
) AS d
LEFT JOIN fact_history_coded h ON d.document -> 'assertion' IS NULL AND h.fact_key = e.fact_key
WHERE c.attribute_id = k.attribute_id
"""  # noqa: S608 (constants only)
_FACTS = f"SELECT {_FACT} FROM fact_history_coded h WHERE h.fact_key = ANY($1::uuid[])"  # noqa: S608
_LOAD_CONFLICTS = """
SELECT c.* FROM conflict_state c
JOIN unnest($1::text[], $2::text[]) AS k(patient_id, attribute)
  ON c.patient_id = k.patient_id AND c.attribute = k.attribute
"""
# The rows the batch changes, locked (in key order, so that two writers cannot deadlock):
# their assertions are merged in Python and written back whole.
_LOCK_ROWS = """
SELECT p.patient_id, p.attribute_block, p.names, p.fact_keys, p.event_times, p.documents
FROM patient_assertions p
JOIN unnest($1::text[], $2::int[]) AS k(patient_id, attribute_block)
  ON p.patient_id = k.patient_id AND p.attribute_block = k.attribute_block
ORDER BY p.patient_id, p.attribute_block
FOR UPDATE OF p
"""
# Every row's entries are a slice of the flat arrays ($4-$6: from `first`, `count` entries).
# A row that exists is only overwritten if this transaction locked it ($10, $11); a new row
# that another transaction inserted meanwhile is not written (nor returned), and is merged
# again.
_WRITE_ROWS = """
INSERT INTO patient_assertions AS p (kafka_partition, attribute_block, patient_id, names,
                                     fact_keys, event_times, documents)
SELECT t.kafka_partition, t.attribute_block, t.patient_id,
       ($4::int[])[3 * t.first + 1 : 3 * (t.first + t.count)],
       ($5::uuid[])[t.first + 1 : t.first + t.count],
       ($6::timestamptz[])[t.first + 1 : t.first + t.count], t.documents
FROM unnest($1::text[], $2::int[], $3::int[], $7::int[], $8::int[], $9::jsonb[])
    AS t(patient_id, attribute_block, kafka_partition, first, count, documents)
ON CONFLICT (patient_id, attribute_block) DO UPDATE SET
    kafka_partition = excluded.kafka_partition, names = excluded.names,
    fact_keys = excluded.fact_keys, event_times = excluded.event_times,
    documents = excluded.documents
WHERE (p.patient_id, p.attribute_block) IN (SELECT * FROM unnest($10::text[], $11::int[]))
RETURNING patient_id, attribute_block
"""
_UPSERT_CONFLICTS = """
INSERT INTO conflict_state (patient_id, attribute, conflict_id, revision, status,
                            assertions_digest, kafka_partition, opened_at, updated_at, reviewed)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::text[], $6::text[],
                     $7::int[], $8::timestamptz[], $9::timestamptz[], $10::boolean[])
ON CONFLICT (patient_id, attribute) DO UPDATE SET
    conflict_id = excluded.conflict_id, revision = excluded.revision, status = excluded.status,
    assertions_digest = excluded.assertions_digest, kafka_partition = excluded.kafka_partition,
    opened_at = excluded.opened_at, updated_at = excluded.updated_at,
    reviewed = excluded.reviewed
-- A conflict's revisions only go forward (a late write of an older revision changes nothing).
WHERE conflict_state.conflict_id <> excluded.conflict_id
   OR conflict_state.revision <= excluded.revision
"""


_RECORD_HISTORY = """
INSERT INTO fact_history_coded (fact_key, fact_name, patient_id, attribute_id, attribute_class_id,
                                source_id, subject, value, display, status_id, event_time, unit,
                                effective_time, received_time, record_id, record_version,
                                raw_topic_id, raw_partition, raw_offset, payload_sha256,
                                payload_digest, raw_location, event_time_basis_id,
                                provenance_extra)
SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::int[], $5::int[], $6::int[],
                     $7::text[], $8::text[], $9::text[], $10::int[], $11::timestamptz[],
                     $12::text[], $13::timestamptz[], $14::timestamptz[], $15::text[],
                     $16::text[], $17::int[], $18::int[], $19::bigint[], $20::bytea[],
                     $21::text[], $22::text[], $23::int[], $24::jsonb[])
ON CONFLICT (fact_key) DO NOTHING
RETURNING fact_key
"""
_RECORD_OWNERS = """
INSERT INTO subject_owners_coded (source_id, subject, patient_id)
SELECT * FROM unnest($1::int[], $2::text[], $3::text[])
ON CONFLICT (source_id, subject) DO UPDATE SET patient_id = excluded.patient_id
WHERE subject_owners_coded.patient_id <> excluded.patient_id
"""
# subject_merge_moves is rare and small: it keeps the source's name.
_MOVE_SUBJECTS = """
WITH moved AS (
    UPDATE subject_owners_coded o SET patient_id = m.survivor
    FROM unnest($1::text[], $2::text[]) AS m(absorbed, survivor)
    WHERE o.patient_id = m.absorbed
    RETURNING m.absorbed, m.survivor, o.source_id, o.subject
)
INSERT INTO subject_merge_moves (absorbed_patient_id, survivor_patient_id, source_system,
                                 subject)
SELECT moved.absorbed, moved.survivor, n.name, moved.subject
FROM moved JOIN state_names n ON n.id = moved.source_id
ON CONFLICT (absorbed_patient_id, source_system, subject) DO UPDATE SET
    survivor_patient_id = excluded.survivor_patient_id
"""
_RESTORE_SUBJECTS = """
WITH restored AS (
    DELETE FROM subject_merge_moves WHERE absorbed_patient_id = $1
    RETURNING source_system, subject
), coded AS (
    SELECT n.id AS source_id, r.subject
    FROM restored r JOIN state_names n ON n.name = r.source_system
), previous AS (
    SELECT o.patient_id FROM subject_owners_coded o JOIN coded USING (source_id, subject)
), moved AS (
    UPDATE subject_owners_coded o SET patient_id = $1 FROM coded r
    WHERE o.source_id = r.source_id AND o.subject = r.subject
)
SELECT DISTINCT patient_id FROM previous
"""
# What every subject the patients own now asserted, and what was recorded of the patients
# under subjects they no longer own (whose assertions must leave them).
_HISTORY_OF = f"""
WITH owned AS (
    SELECT source_id, subject, patient_id AS owner FROM subject_owners_coded
    WHERE patient_id = ANY($1::text[])
)
SELECT h.attribute_id, h.attribute_class_id, owned.owner, {_FACT}
FROM fact_history_coded h JOIN owned USING (source_id, subject)
UNION
SELECT h.attribute_id, h.attribute_class_id, coalesce(o.patient_id, h.patient_id) AS owner,
       {_FACT}
FROM fact_history_coded h
LEFT JOIN subject_owners_coded o USING (source_id, subject)
WHERE h.patient_id = ANY($1::text[])
"""  # noqa: S608 (constants only)
_LOAD_STALE = """
SELECT s.* FROM stale_state s
JOIN unnest($1::text[], $2::text[]) AS k(patient_id, attribute)
  ON s.patient_id = k.patient_id AND s.attribute = k.attribute
"""
_UPSERT_STALE = """
INSERT INTO stale_state (patient_id, attribute, source_system, conflict_id, revision, status,
                         fact_id, kafka_partition, opened_at, updated_at)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int[], $6::text[],
                     $7::text[], $8::int[], $9::timestamptz[], $10::timestamptz[])
ON CONFLICT (patient_id, attribute, source_system) DO UPDATE SET
    conflict_id = excluded.conflict_id, revision = excluded.revision, status = excluded.status,
    fact_id = excluded.fact_id, kafka_partition = excluded.kafka_partition,
    opened_at = excluded.opened_at, updated_at = excluded.updated_at
WHERE stale_state.conflict_id <> excluded.conflict_id
   OR stale_state.revision <= excluded.revision
"""
_LOAD_HELD = """
SELECT h.* FROM held_records h
JOIN unnest($1::text[], $2::text[]) AS k(patient_id, attribute)
  ON h.patient_id = k.patient_id AND h.attribute = k.attribute
"""
# The holds of the changed attributes are replaced whole: what is not held any more goes.
_DROP_HELD = """
DELETE FROM held_records h USING unnest($1::text[], $2::text[]) AS k(patient_id, attribute)
WHERE h.patient_id = k.patient_id AND h.attribute = k.attribute
"""
_INSERT_HELD = """
INSERT INTO held_records (patient_id, attribute, source_system, held_since, held_until,
                          kafka_partition)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::timestamptz[],
                     $6::int[])
"""
_SET_TIMERS = """
INSERT INTO stale_timers (patient_id, attribute, attribute_class, kafka_partition, due_at)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::timestamptz[])
ON CONFLICT (patient_id, attribute) DO UPDATE SET
    attribute_class = excluded.attribute_class, kafka_partition = excluded.kafka_partition,
    due_at = excluded.due_at
"""
_DROP_TIMERS = """
DELETE FROM stale_timers t USING unnest($1::text[], $2::text[]) AS k(patient_id, attribute)
WHERE t.patient_id = k.patient_id AND t.attribute = k.attribute
"""
_DUE_TIMERS = """
SELECT patient_id, attribute, attribute_class, kafka_partition FROM stale_timers
WHERE kafka_partition = ANY($1::int[]) AND due_at <= $2
ORDER BY due_at LIMIT $3
"""
_ATTRIBUTES_OF = f"""
SELECT DISTINCT p.patient_id, c.attribute_id, c.attribute_class_id
FROM patient_assertions p
{_ENTRIES}
WHERE p.patient_id = ANY($1::text[])
"""  # noqa: S608 (constants only)


class ConflictStore(ConflictStorePort):
    """The state of record in PostgreSQL; every save is one transaction with its outbox rows."""

    def __init__(
        self, pool: asyncpg.Pool, outbox: Outbox, leases: PartitionLeases | None = None
    ) -> None:
        self.pool = pool
        self.outbox = outbox
        # The worker wires them (composition); without them nothing is fenced.
        self.leases = leases
        self.names = StateNames(pool)

    async def claim(self, partitions: set[int]) -> None:
        if self.leases is not None:
            await self.leases.claim(partitions)

    async def release(self, partitions: set[int]) -> None:
        if self.leases is not None:
            self.leases.release(partitions)

    async def move_subjects(self, merges: Sequence[tuple[str, str]]) -> None:
        await self.pool.execute(
            _MOVE_SUBJECTS, [a for a, _ in merges], [survivor for _, survivor in merges]
        )

    async def restore_subjects(self, absorbed: str) -> set[str]:
        rows = await self.pool.fetch(_RESTORE_SUBJECTS, absorbed)
        return {row["patient_id"] for row in rows}

    async def history_of(self, patient_ids: Sequence[str]) -> list[HistoricFact]:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(_HISTORY_OF, list(patient_ids))
            names = await self.names.names(
                conn, _ids_in(rows, ("attribute_id", "attribute_class_id", *_FACT_NAMES))
            )
        return [
            HistoricFact(
                owner=row["owner"],
                attribute=names[row["attribute_id"]],
                attribute_class=_attribute_class(names[row["attribute_class_id"]]),
                assertion=_fact(row, names),
            )
            for row in rows
        ]

    async def attributes_of(self, patient_ids: Sequence[str]) -> dict[Key, AttributeClass]:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(_ATTRIBUTES_OF, list(patient_ids))
            ids = _ids_in(rows, ("attribute_id", "attribute_class_id"))
            names = await self.names.names(conn, ids)
        return {
            (row["patient_id"], names[row["attribute_id"]]): _attribute_class(
                names[row["attribute_class_id"]]
            )
            for row in rows
        }

    async def load(
        self, keys: Sequence[Key], classes: Mapping[Key, AttributeClass]
    ) -> dict[Key, AttributeState]:
        patients = [k[0] for k in keys]
        attributes = [k[1] for k in keys]
        ids = await self.names.ids(attributes)
        async with self.pool.acquire() as conn:
            assertion_rows = await conn.fetch(
                _LOAD_ASSERTIONS, patients, [ids[a] for a in attributes]
            )
            names = await self.names.names(
                conn, _ids_in(assertion_rows, ("attribute_id", "source_id", *_FACT_NAMES))
            )
            conflict_rows = await conn.fetch(_LOAD_CONFLICTS, patients, attributes)
            stale_rows = await conn.fetch(_LOAD_STALE, patients, attributes)
            held_rows = await conn.fetch(_LOAD_HELD, patients, attributes)
        states = {key: AttributeState(key[0], key[1], classes[key]) for key in keys}
        for row in assertion_rows:
            state = states[(row["patient_id"], names[row["attribute_id"]])]
            source = names[row["source_id"]]
            document = None if row["document"] is None else orjson.loads(row["document"])
            state.assertions[source] = _assertion(row, document, names)
            if document is not None and "records" in document:
                state.records[source] = _records(document["records"])
        for row in conflict_rows:
            states[(row["patient_id"], row["attribute"])].conflict = _conflict_state(
                row, row["assertions_digest"], reviewed=row["reviewed"]
            )
        for row in stale_rows:
            states[(row["patient_id"], row["attribute"])].stale[row["source_system"]] = (
                _conflict_state(row, row["fact_id"])
            )
        for row in held_rows:
            states[(row["patient_id"], row["attribute"])].held[row["source_system"]] = Hold(
                row["held_since"], row["held_until"]
            )
        return states

    async def due(self, partitions: Sequence[int], now: datetime, limit: int) -> list[Timer]:
        rows = await self.pool.fetch(_DUE_TIMERS, list(partitions), now, limit)
        return [
            ((r["patient_id"], r["attribute"]), r["attribute_class"], r["kafka_partition"], now)
            for r in rows
        ]

    async def save(
        self,
        assertions: Iterable[tuple[AttributeState, str, int]],
        conflicts: Iterable[tuple[AttributeState, int]],
        events: Sequence[OutboundRecord],
        *,
        facts: Sequence[ClinicalFact] = (),
        rebuilt: Iterable[tuple[AttributeState, str, int]] = (),
        stale: Iterable[tuple[AttributeState, str, int]] = (),
        held: Iterable[tuple[AttributeState, int]] = (),
        timers: Sequence[Timer] = (),
    ) -> None:
        assertions, rebuilt, stale = list(assertions), list(rebuilt), list(stale)
        conflicts, held = list(conflicts), list(held)
        c_rows: list[tuple[AttributeState, ConflictState, int]] = []
        for st, partition in conflicts:
            if st.conflict is not None:
                c_rows.append((st, st.conflict, partition))
        partitions = {p for rows in (assertions, rebuilt, stale) for _, _, p in rows}
        partitions |= {p for rows in (conflicts, held) for _, p in rows}
        partitions |= {timer[2] for timer in timers}
        # Committed before the transaction that refers to them (state_coding).
        ids = await self.names.ids(_names_written(facts, [*assertions, *rebuilt]))
        async with self.pool.acquire() as conn, conn.transaction():
            if self.leases is not None:
                await self.leases.check(conn, partitions)
            # The history first: an assertion that is exactly its recorded fact refers to it.
            recorded = await _record(conn, facts, ids)
            known = await self._recorded_as(conn, [*assertions, *rebuilt], recorded)
            await _write_assertions(conn, assertions, rebuilt, known, ids)
            await _write_stale(conn, stale)
            await _write_held(conn, held)
            await _write_timers(conn, timers)
            if c_rows:
                columns = [
                    (st.patient_id, st.attribute, *_conflict_columns(c, p), c.reviewed)
                    for st, c, p in c_rows
                ]
                await conn.execute(_UPSERT_CONFLICTS, *unnest_columns(columns, 10))
            await self.outbox.write(conn, events)

    async def _recorded_as(
        self,
        conn: asyncpg.Connection,
        rows: Sequence[tuple[AttributeState, str, int]],
        recorded: dict[str, Assertion],
    ) -> dict[str, Assertion]:
        """The facts the assertions name as the history holds them (those recorded in this
        transaction are known already; the rest are read)."""
        wanted = {st.assertions[source].fact_id for st, source, _ in rows} - set(recorded)
        if not wanted:
            return recorded
        found = await conn.fetch(_FACTS, sorted(fact_key(i)[0] for i in wanted))
        names = await self.names.names(conn, _ids_in(found, _FACT_NAMES))
        facts = (_fact(row, names) for row in found)
        return {**recorded, **{fact.fact_id: fact for fact in facts}}


def _names_written(
    facts: Sequence[ClinicalFact], rows: Iterable[tuple[AttributeState, str, int]]
) -> Iterator[str | None]:
    """The names the facts' history rows and the assertion rows hold."""
    for f in facts:
        p = f.provenance
        yield from (f.attribute, f.attribute_class, p.source_system, f.status, p.raw_topic)
        yield p.event_time_basis
    for st, source, _ in rows:
        yield from (st.attribute, st.attribute_class, source)


def _ids_in(rows: Iterable[asyncpg.Record], columns: Sequence[str]) -> Iterator[int | None]:
    """The name ids the rows hold in `columns`."""
    for row in rows:
        for column in columns:
            yield row[column]


def _attribute_class(name: str) -> AttributeClass:
    return cast(AttributeClass, name)


async def _record(
    conn: asyncpg.Connection, facts: Sequence[ClinicalFact], ids: Mapping[str, int]
) -> dict[str, Assertion]:
    """Keep every consumed fact, and note whose each source's subject is now (the newest
    fact's patient), for an unmerge to rebuild from. Returns the facts recorded now (a fact
    recorded before keeps its first record), as assertions, by fact id."""
    if not facts:
        return {}
    keys = [fact_key(f.fact_id) for f in facts]
    history = [
        (
            *key,
            f.patient_id,
            ids[f.attribute],
            ids[f.attribute_class],
            ids[f.provenance.source_system],
            f.subject,
            f.value,
            f.display,
            ids[f.status],
            f.provenance.event_time,
            f.unit,
            f.effective_time,
            *_provenance_columns(f.provenance, ids),
        )
        for f, key in zip(facts, keys, strict=True)
    ]
    rows = await conn.fetch(_RECORD_HISTORY, *unnest_columns(history, 24))
    owners = {(f.provenance.source_system, f.subject): f.patient_id for f in facts if f.subject}
    if owners:
        columns = ((ids[source], subject, eid) for (source, subject), eid in owners.items())
        await conn.execute(_RECORD_OWNERS, *unnest_columns(columns, 3))
    inserted = {row["fact_key"].hex for row in rows}
    return {
        f.fact_id: as_assertion(f)
        for f, (key, _) in zip(facts, keys, strict=True)
        if key in inserted
    }


# A row of patient_assertions: (patient id, attribute block); an entry of it: (class id, fact
# key, event time, document or None), by (attribute id, source id).
_Row = tuple[str, int]
_Entry = tuple[int, object, datetime, dict[str, object] | None]
_WRITE_ATTEMPTS = 5


async def _write_assertions(
    conn: asyncpg.Connection,
    guarded: Sequence[tuple[AttributeState, str, int]],
    rebuilt: Sequence[tuple[AttributeState, str, int]],
    known: Mapping[str, Assertion],
    ids: Mapping[str, int],
) -> None:
    """Merge the changed assertions into their rows. A guarded one never replaces a newer one
    (a stale cache, another worker's during a rebalance, must never put an older assertion
    back); a rebuilt one (an unmerge's) does so on purpose, after the others."""
    changes: dict[_Row, list[tuple[tuple[int, int], _Entry, bool]]] = {}
    partitions: dict[_Row, int] = {}
    for rows, guard in ((guarded, True), (rebuilt, False)):
        for st, source, p in rows:
            key, entry = _entry(st, source, known, ids)
            row = (st.patient_id, key[0] // ATTRIBUTE_BLOCK)
            changes.setdefault(row, []).append((key, entry, guard))
            partitions[row] = p
    for _ in range(_WRITE_ATTEMPTS):
        if not changes:
            return
        locked = await conn.fetch(_LOCK_ROWS, *unnest_columns(changes, 2))
        entries = {(r["patient_id"], r["attribute_block"]): _entries_of(r) for r in locked}
        written: list[tuple[_Row, int, dict[tuple[int, int], _Entry]]] = []
        for row, row_changes in changes.items():
            merged = entries.get(row, {})
            for key, entry, guard in row_changes:
                old = merged.get(key)
                if not guard or old is None or old[2] <= entry[2]:
                    merged[key] = entry
            written.append((row, partitions[row], merged))
        done = await conn.fetch(_WRITE_ROWS, *_row_columns(written), *unnest_columns(entries, 2))
        finished = {(r["patient_id"], r["attribute_block"]) for r in done}
        changes = {row: c for row, c in changes.items() if row not in finished}
    raise RuntimeError(  # a count only: no PHI
        f"{len(changes)} new rows of assertions were written concurrently {_WRITE_ATTEMPTS} "
        "times over"
    )


def _entry(
    st: AttributeState, source: str, known: Mapping[str, Assertion], ids: Mapping[str, int]
) -> tuple[tuple[int, int], _Entry]:
    """An assertion as its row keeps it: exactly its recorded fact is the fact's key
    alone; any other (a tombstone, a fact recorded before the history) whole, in a document."""
    a = st.assertions[source]
    records = st.records.get(a.source_system)
    document: dict[str, object] = {}
    if known.get(a.fact_id) != a:
        document["assertion"] = orjson.Fragment(a.model_dump_json())
    kept_records = _records_json(records)
    if kept_records is not None:
        document["records"] = orjson.Fragment(kept_records)
    entry = (ids[st.attribute_class], fact_key(a.fact_id)[0], _newest_time(a, records))
    return (ids[st.attribute], ids[a.source_system]), (*entry, document or None)


def _entries_of(row: asyncpg.Record) -> dict[tuple[int, int], _Entry]:
    """A locked row's entries (their documents parsed, written back as they were)."""
    names, keys, times = row["names"], row["fact_keys"], row["event_times"]
    documents = {} if row["documents"] is None else orjson.loads(row["documents"])
    entries: dict[tuple[int, int], _Entry] = {}
    for i, (key, time) in enumerate(zip(keys, times, strict=True)):
        attribute, source, attribute_class = names[3 * i : 3 * i + 3]
        document = documents.get(f"{attribute}:{source}")
        entries[(attribute, source)] = (attribute_class, key, time, document)
    return entries


def _row_columns(
    written: Sequence[tuple[_Row, int, Mapping[tuple[int, int], _Entry]]],
) -> tuple[list[object], ...]:
    """_WRITE_ROWS' $1-$9: per row its patient, block, partition, first entry, entry count and
    documents; every row's names, keys and times flat."""
    patients: list[object] = []
    blocks: list[object] = []
    partitions: list[object] = []
    firsts: list[object] = []
    counts: list[object] = []
    documents: list[object] = []
    names: list[object] = []
    keys: list[object] = []
    times: list[object] = []
    for (patient, block), partition, entries in written:
        patients.append(patient)
        blocks.append(block)
        partitions.append(partition)
        firsts.append(len(keys))
        counts.append(len(entries))
        kept: dict[str, object] = {}
        for (attribute, source), (attribute_class, key, time, document) in entries.items():
            names.extend((attribute, source, attribute_class))
            keys.append(key)
            times.append(time)
            if document is not None:
                kept[f"{attribute}:{source}"] = document
        documents.append(orjson.dumps(kept).decode() if kept else None)
    return patients, blocks, partitions, names, keys, times, firsts, counts, documents


def _conflict_state(row: asyncpg.Record, digest: str, *, reviewed: bool = False) -> ConflictState:
    """A conflict_state or stale_state row (a stale record's digest is its stale fact's id)."""
    return ConflictState(
        conflict_id=row["conflict_id"],
        revision=row["revision"],
        status=row["status"],
        digest=digest,
        opened_at=row["opened_at"],
        updated_at=row["updated_at"],
        reviewed=reviewed,
    )


def _assertion(
    row: asyncpg.Record, document: Mapping[str, object] | None, names: Mapping[int, str]
) -> Assertion:
    """An entry of a patient's row (joined with its fact's history row)."""
    if document is not None and "assertion" in document:
        return Assertion.model_validate(document["assertion"])
    return _fact(row, names)


# Provenance's fields fact_history has columns for (source_system and event_time: the fact's).
_PROVENANCE_COLUMNS = frozenset(
    {
        "source_system",
        "event_time",
        "source_record_id",
        "source_record_version",
        "received_time",
        "raw_topic",
        "raw_partition",
        "raw_offset",
        "payload_sha256",
        "raw_location",
        "event_time_basis",
    }
)
# The others, kept in provenance_extra when set.
_PROVENANCE_EXTRA = tuple(
    name for name in Provenance.model_fields if name not in _PROVENANCE_COLUMNS
)
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def _provenance_columns(p: Provenance, ids: Mapping[str, int]) -> tuple[object, ...]:
    """received_time … provenance_extra, in _RECORD_HISTORY's order."""
    digest = p.payload_sha256
    packed = _SHA256_HEX.fullmatch(digest) is not None
    # Only what is set: a fact read from text carries its TextEvidence here, others nothing
    # (so most facts need no dump at all).
    present = {name for name in _PROVENANCE_EXTRA if getattr(p, name) is not None}
    extra = p.model_dump(mode="json", include=present) if present else None
    return (
        p.received_time,
        p.source_record_id,
        p.source_record_version,
        ids[p.raw_topic],
        p.raw_partition,
        p.raw_offset,
        bytes.fromhex(digest) if packed else None,
        None if packed else digest,
        p.raw_location,
        None if p.event_time_basis is None else ids[p.event_time_basis],
        orjson.dumps(extra).decode() if extra else None,
    )


def _fact(row: asyncpg.Record, names: Mapping[int, str]) -> Assertion:
    """The fact of a history row (selected as _FACT) as an assertion, its provenance whole
    again."""
    digest = row["payload_sha256"]
    basis = row["event_time_basis_id"]
    source = names[row["h_source_id"]]
    provenance: dict[str, object] = {
        "source_system": source,
        "source_record_id": row["record_id"],
        "source_record_version": row["record_version"],
        "event_time": row["h_event_time"],
        "received_time": row["received_time"],
        "raw_topic": names[row["raw_topic_id"]],
        "raw_partition": row["raw_partition"],
        "raw_offset": row["raw_offset"],
        "payload_sha256": row["payload_digest"] if digest is None else bytes(digest).hex(),
        "raw_location": row["raw_location"],
        "event_time_basis": None if basis is None else names[basis],
    }
    if row["provenance_extra"] is not None:
        provenance.update(orjson.loads(row["provenance_extra"]))
    return Assertion(
        source_system=source,
        value=row["value"],
        display=row["display"],
        status=names[row["status_id"]],
        fact_id=fact_id_of(row["h_fact_key"], row["h_fact_name"]),
        provenance=Provenance.model_validate(provenance),
        unit=row["unit"],
        effective_time=row["effective_time"],
    )


def _newest_time(belief: Assertion, records: dict[str, Assertion] | None) -> datetime:
    """The row's event time: the newest of the source's records (a belief may fall back to an
    older record when a newer one is withdrawn; the source's state still moved forward)."""
    if not records:
        return belief.provenance.event_time
    return max(a.provenance.event_time for a in records.values())


def _records_json(records: dict[str, Assertion] | None) -> str | None:
    if not records:
        return None
    return orjson.dumps(
        [a.model_dump(mode="json", exclude_defaults=True) for _, a in sorted(records.items())]
    ).decode()


def _records(document: object) -> dict[str, Assertion]:
    records = (Assertion.model_validate(item) for item in cast(list[object], document))
    return {record_key(a): a for a in records}


async def _write_stale(
    conn: asyncpg.Connection, rows: Iterable[tuple[AttributeState, str, int]]
) -> None:
    changed = [
        (st.patient_id, st.attribute, source, *_conflict_columns(st.stale[source], p))
        for st, source, p in rows
    ]
    if changed:
        await conn.execute(_UPSERT_STALE, *unnest_columns(changed, 10))


def _conflict_columns(c: ConflictState, partition: int) -> tuple[object, ...]:
    """The columns conflict_state and stale_state share, in their order."""
    return (c.conflict_id, c.revision, c.status, c.digest, partition, c.opened_at, c.updated_at)


async def _write_held(conn: asyncpg.Connection, rows: Iterable[tuple[AttributeState, int]]) -> None:
    changed = list(rows)
    if not changed:
        return
    await conn.execute(
        _DROP_HELD, [st.patient_id for st, _ in changed], [st.attribute for st, _ in changed]
    )
    holds = [
        (st.patient_id, st.attribute, source, hold.since, hold.until, p)
        for st, p in changed
        for source, hold in st.held.items()
    ]
    if holds:
        await conn.execute(_INSERT_HELD, *unnest_columns(holds, 6))


async def _write_timers(conn: asyncpg.Connection, timers: Sequence[Timer]) -> None:
    armed = [t for t in timers if t[3] is not None]
    if armed:
        columns = ((*key, c, p, due) for key, c, p, due in armed)
        await conn.execute(_SET_TIMERS, *unnest_columns(columns, 5))
    cleared = [key for key, _, _, due in timers if due is None]
    if cleared:
        await conn.execute(_DROP_TIMERS, [k[0] for k in cleared], [k[1] for k in cleared])
