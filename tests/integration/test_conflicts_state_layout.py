"""The conflicts state's compact layout (issue 17, migration 0019) against a real PostgreSQL:
each fact's provenance is stored once, in fact_history, and an assertion that is exactly its
fact refers to it; what the store reads back is what was written, and the migration converts
the rows an older release wrote."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

import asyncpg
import orjson
import pytest
import pytest_asyncio

from concord.conflicts.rules import AttributeState, apply_fact, as_assertion
from concord.conflicts.store import ConflictStore
from concord.events.models import ClinicalFact, Provenance
from concord.runtime.db import apply_migrations, migration_files
from concord.runtime.outbox import Outbox
from concord.stack.postgres import PostgresInfo, create_database, drop_database

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 1, 9, 30, 15, 123456, tzinfo=UTC)
BIRTH = ("Patient.birthDate", "DEMOGRAPHICS")


def fact(patient: str, source: str, value: str, **provenance: object) -> ClinicalFact:
    fields: dict[str, object] = {
        "source_system": source,
        "source_record_id": f"Patient/{source}-{patient}",
        "source_record_version": "3",
        "event_time": T0,
        "received_time": T0 + timedelta(seconds=5),
        "raw_topic": "ehr.raw.fhir",
        "raw_partition": 2,
        "raw_offset": 2**40 + 7,
        "payload_sha256": "0f" * 32,
        "raw_location": "Patient.birthDate",
        "event_time_basis": "meta.lastUpdated",
        **provenance,
    }
    return ClinicalFact(
        fact_id=uuid.uuid4().hex,
        patient_id=patient,
        attribute=BIRTH[0],
        attribute_class=BIRTH[1],
        value=value,
        display=f"born {value}",
        status="ASSERTED",
        provenance=Provenance.model_validate(fields),
        subject=f"Patient/{source}-{patient}",
    )


def patient_id() -> str:
    return f"LAY-{uuid.uuid4().hex[:10]}"


@pytest.mark.asyncio
async def test_an_assertion_reads_back_with_the_provenance_written(pool: asyncpg.Pool) -> None:
    """Through the port: a fact's assertion is stored as a reference to its history row and
    comes back whole (every provenance field, a digest that is not hex kept as written); an
    assertion that is not its recorded fact (a tombstone) is stored whole."""
    store = ConflictStore(pool, Outbox(pool, f"test-{uuid.uuid4().hex[:6]}"))
    patient = patient_id()
    key = (patient, BIRTH[0])
    hex_fact = fact(patient, "hosp", "1970-01-01")
    odd_fact = fact(
        patient, "lab", "1970-01-02", payload_sha256="sha256:NOT-HEX", raw_location=None
    )
    state = AttributeState(patient, *BIRTH)
    for f in (hex_fact, odd_fact):
        apply_fact(state, f)
    await store.save([(state, "hosp", 1), (state, "lab", 1)], [], [], facts=[hex_fact, odd_fact])

    loaded = (await store.load([key], {key: BIRTH[1]}))[key]
    assert loaded.assertions == state.assertions
    for f in (hex_fact, odd_fact):
        assert loaded.assertions[f.provenance.source_system].provenance == f.provenance
        assert loaded.assertions[f.provenance.source_system] == as_assertion(f)
    stored = await pool.fetch(
        "SELECT source_system, assertion FROM assertions WHERE patient_id = $1", patient
    )
    assert {r["source_system"]: r["assertion"] for r in stored} == {"hosp": None, "lab": None}
    raw = await pool.fetchrow(
        "SELECT raw_topic, raw_partition, raw_offset, encode(payload_sha256, 'hex') AS digest "
        "FROM fact_history WHERE fact_id = $1",
        hex_fact.fact_id,
    )
    assert tuple(raw) == ("ehr.raw.fhir", 2, 2**40 + 7, "0f" * 32)

    # A tombstone (as a merge leaves one) is no recorded fact: it is stored whole.
    tombstone = hex_fact.model_copy(
        update={
            "fact_id": "merged-" + hex_fact.fact_id,
            "value": None,
            "display": None,
            "status": "DELETED",
            "provenance": hex_fact.provenance.model_copy(
                update={"event_time": T0 + timedelta(days=1)}
            ),
        }
    )
    apply_fact(state, tombstone)
    await store.save([(state, "hosp", 1)], [], [])
    again = (await store.load([key], {key: BIRTH[1]}))[key]
    assert again.assertions == state.assertions
    assert again.assertions["hosp"].provenance == tombstone.provenance
    history = await store.history_of([patient])
    assert {h.assertion.fact_id: h.assertion for h in history} == {
        f.fact_id: as_assertion(f) for f in (hex_fact, odd_fact)
    }


# --- the migration ---------------------------------------------------------------------------


@pytest.fixture
def fresh_dsn(postgres: PostgresInfo) -> Iterator[str]:
    """A new, empty database on the session's server."""
    name = f"concord_layout_{uuid.uuid4().hex[:12]}"
    dsn = asyncio.run(create_database(postgres.dsn, name))
    yield dsn
    asyncio.run(drop_database(postgres.dsn, name))


@pytest_asyncio.fixture
async def before_0019(fresh_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """The database as the release before migration 0019 left it."""
    conn = await asyncpg.connect(fresh_dsn)
    await conn.execute(
        "CREATE TABLE schema_migrations (name text PRIMARY KEY, "
        "applied_at timestamptz NOT NULL DEFAULT now())"
    )
    for name, sql in migration_files():
        if name < "0019":
            await conn.execute(sql)
            await conn.execute("INSERT INTO schema_migrations (name) VALUES ($1)", name)
    yield conn
    await conn.close()


_OLD_HISTORY = """
INSERT INTO fact_history (fact_id, patient_id, attribute, attribute_class, source_system,
                          subject, value, display, status, event_time, provenance)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'ASSERTED', $9, $10::jsonb)
"""
_OLD_ASSERTION = """
INSERT INTO assertions (patient_id, attribute, source_system, kafka_partition, attribute_class,
                        value, display, status, fact_id, event_time, received_time, provenance)
VALUES ($1, $2, $3, 0, $4, $5, $6, $7, $8, $9, $10, $11::jsonb)
"""


def _json(p: Provenance) -> str:
    return orjson.dumps(p.model_dump(mode="json")).decode()


@pytest.mark.asyncio
async def test_the_migration_converts_the_rows_an_older_release_wrote(
    before_0019: asyncpg.Connection, fresh_dsn: str
) -> None:
    """Old rows: an assertion that is its recorded fact, one whose fact the history does not
    know (recorded before migration 0005), a tombstone, and a history row whose provenance
    carries an event time other than the row's. After 0019 the store reads each back as it
    was written, and only the first became a reference."""
    conn, patient = before_0019, patient_id()
    recorded = fact(patient, "hosp", "1970-01-01")
    unknown = fact(patient, "lab", "1970-01-02", payload_sha256="not hex", event_time_basis=None)
    tombstone = fact(patient, "clinic", "1970-01-03").model_copy(
        update={"value": None, "display": None, "status": "DELETED"}
    )
    odd = fact(patient, "old", "1970-01-04")  # history only, its event time not the row's
    history = [
        (recorded, recorded.provenance.event_time),
        (odd, odd.provenance.event_time - timedelta(hours=1)),
    ]
    for f, at in history:
        await conn.execute(
            _OLD_HISTORY,
            f.fact_id,
            patient,
            *BIRTH,
            f.provenance.source_system,
            f.subject,
            f.value,
            f.display,
            at,
            _json(f.provenance),
        )
    for f in (recorded, unknown, tombstone):
        p = f.provenance
        await conn.execute(
            _OLD_ASSERTION,
            patient,
            *BIRTH[:1],
            p.source_system,
            BIRTH[1],
            f.value,
            f.display,
            f.status,
            f.fact_id,
            p.event_time,
            p.received_time,
            _json(p),
        )

    assert await apply_migrations(fresh_dsn) == [
        name for name, _ in migration_files() if name >= "0019"
    ]
    pool = await asyncpg.create_pool(fresh_dsn, min_size=1, max_size=2)
    assert pool is not None
    try:
        store = ConflictStore(pool, Outbox(pool, "test"))
        key = (patient, BIRTH[0])
        loaded = (await store.load([key], {key: BIRTH[1]}))[key]
        assert loaded.assertions == {
            f.provenance.source_system: as_assertion(f) for f in (recorded, unknown, tombstone)
        }
        inline = await pool.fetch(
            "SELECT source_system FROM assertions WHERE assertion IS NOT NULL ORDER BY 1"
        )
        assert [r["source_system"] for r in inline] == ["clinic", "lab"]
        by_id = {h.assertion.fact_id: h.assertion for h in await store.history_of([patient])}
        assert by_id[recorded.fact_id] == as_assertion(recorded)
        assert by_id[odd.fact_id].provenance == odd.provenance
        for dropped in ("provenance", "received_time", "value"):
            assert not await pool.fetchval(
                "SELECT count(*) FROM information_schema.columns "
                "WHERE table_name = 'assertions' AND column_name = $1",
                dropped,
            )
    finally:
        await pool.close()
