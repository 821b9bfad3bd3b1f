"""The conflicts state's compact layout (issue 17, migrations 0019 and 0021) against a real
PostgreSQL: each fact's provenance is stored once, in the history, and an assertion that is
exactly its fact refers to it; names are ids of state_names and fact ids 16-byte keys, read
back through views under the old names; what the store reads back is what was written, and
each migration converts the rows an older release wrote."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta

import asyncpg
import orjson
import pytest
import pytest_asyncio

from concord.conflicts.beliefs import record_key
from concord.conflicts.rules import AttributeState, apply_fact, as_assertion
from concord.conflicts.state_coding import StateNames, fact_key
from concord.conflicts.store import ATTRIBUTE_BLOCK, ConflictStore
from concord.events.models import ClinicalFact, Provenance, TextEvidence
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


EVIDENCE = TextEvidence(
    kind="note-text",
    document="content/0",
    section="history",
    start=10,
    end=32,
    excerpt="born on 3 January 1970",
    assertion="present",
    confidence=0.9,
    method="medspacy-1.3.1/concord-oncology-text-2026-12d",
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
    read_fact = fact(patient, "notes", "1970-01-03", text=EVIDENCE)  # read from clinical text
    state = AttributeState(patient, *BIRTH)
    for f in (hex_fact, odd_fact, read_fact):
        apply_fact(state, f)
    await store.save(
        [(state, "hosp", 1), (state, "lab", 1), (state, "notes", 1)],
        [],
        [],
        facts=[hex_fact, odd_fact, read_fact],
    )

    loaded = (await store.load([key], {key: BIRTH[1]}))[key]
    assert loaded.assertions == state.assertions
    assert loaded.assertions["notes"].provenance.text == EVIDENCE
    for f in (hex_fact, odd_fact, read_fact):
        assert loaded.assertions[f.provenance.source_system].provenance == f.provenance
        assert loaded.assertions[f.provenance.source_system] == as_assertion(f)
    stored = await pool.fetch(
        "SELECT source_system, assertion FROM assertions WHERE patient_id = $1", patient
    )
    assert {r["source_system"]: r["assertion"] for r in stored} == {
        "hosp": None,
        "lab": None,
        "notes": None,
    }
    extra = await pool.fetch(
        "SELECT source_system, provenance_extra FROM fact_history WHERE patient_id = $1", patient
    )
    assert {
        r["source_system"]: r["provenance_extra"] and orjson.loads(r["provenance_extra"])
        for r in extra
    } == {"hosp": None, "lab": None, "notes": {"text": EVIDENCE.model_dump(mode="json")}}
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
        f.fact_id: as_assertion(f) for f in (hex_fact, odd_fact, read_fact)
    }


# --- the migration ---------------------------------------------------------------------------


@pytest.fixture
def fresh_dsn(postgres: PostgresInfo) -> Iterator[str]:
    """A new, empty database on the session's server."""
    name = f"concord_layout_{uuid.uuid4().hex[:12]}"
    dsn = asyncio.run(create_database(postgres.dsn, name))
    yield dsn
    asyncio.run(drop_database(postgres.dsn, name))


async def _migrated_before(dsn: str, migration: str) -> asyncpg.Connection:
    """A connection to the database as the release before `migration` left it."""
    conn = await asyncpg.connect(dsn)
    await conn.execute(
        "CREATE TABLE schema_migrations (name text PRIMARY KEY, "
        "applied_at timestamptz NOT NULL DEFAULT now())"
    )
    for name, sql in migration_files():
        if name < migration:
            await conn.execute(sql)
            await conn.execute("INSERT INTO schema_migrations (name) VALUES ($1)", name)
    return conn


# Opens a connection to the database as the release before a migration left it.
OpenRelease = Callable[[str], Awaitable[asyncpg.Connection]]


@pytest_asyncio.fixture
async def release_before(fresh_dsn: str) -> AsyncIterator[OpenRelease]:
    """Opens a connection to the fresh database as the release before a migration left it;
    closed at the end of the test."""
    opened: list[asyncpg.Connection] = []

    async def before(migration: str) -> asyncpg.Connection:
        opened.append(await _migrated_before(fresh_dsn, migration))
        return opened[-1]

    yield before
    for conn in opened:
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
    release_before: OpenRelease, fresh_dsn: str
) -> None:
    """Old rows: an assertion that is its recorded fact, one whose fact the history does not
    know (recorded before migration 0005), a tombstone, and a history row whose provenance
    carries an event time other than the row's. After 0019 the store reads each back as it
    was written, and only the first became a reference."""
    conn, patient = await release_before("0019"), patient_id()
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


# --- migration 0021: names and fact ids coded ------------------------------------------------


@pytest.mark.asyncio
async def test_names_and_fact_ids_are_coded_and_read_back_through_the_views(
    pool: asyncpg.Pool,
) -> None:
    """A fact id of 32 hex digits is its own key; any other is kept whole beside a key derived
    from it. The views under the old names spell every name out, and a second worker (its own
    cache of names) reads what the first wrote."""
    patient = patient_id()
    key = (patient, BIRTH[0])
    hex_fact = fact(patient, "hosp", "1970-01-01")
    named_fact = fact(patient, f"feed-{uuid.uuid4().hex[:6]}", "1970-01-02").model_copy(
        update={"fact_id": f"feed:Observation/{uuid.uuid4()}"}
    )
    state = AttributeState(patient, *BIRTH)
    for f in (hex_fact, named_fact):
        apply_fact(state, f)
    sources = [(state, f.provenance.source_system, 1) for f in (hex_fact, named_fact)]
    writer = ConflictStore(pool, Outbox(pool, f"test-{uuid.uuid4().hex[:6]}"))
    await writer.save(sources, [], [], facts=[hex_fact, named_fact])

    reader = ConflictStore(pool, Outbox(pool, "test"))
    loaded = (await reader.load([key], {key: BIRTH[1]}))[key]
    assert loaded.assertions == {
        f.provenance.source_system: as_assertion(f) for f in (hex_fact, named_fact)
    }
    coded = await pool.fetch(
        "SELECT fact_key, fact_name FROM fact_history_coded WHERE patient_id = $1", patient
    )
    assert {(r["fact_key"].hex, r["fact_name"]) for r in coded} == {
        fact_key(hex_fact.fact_id),
        fact_key(named_fact.fact_id),
    }
    assert fact_key(hex_fact.fact_id) == (hex_fact.fact_id, None)
    stored = await pool.fetch(
        "SELECT fact_id, attribute, attribute_class, source_system, status, raw_topic, "
        "event_time_basis FROM fact_history WHERE patient_id = $1",
        patient,
    )
    assert {tuple(r) for r in stored} == {
        (f.fact_id, *BIRTH, f.provenance.source_system, "ASSERTED", "ehr.raw.fhir",
         "meta.lastUpdated")
        for f in (hex_fact, named_fact)
    }  # fmt: skip
    referred = await pool.fetch(
        "SELECT fact_id, assertion FROM assertions WHERE patient_id = $1", patient
    )
    assert {(r["fact_id"], r["assertion"]) for r in referred} == {
        (hex_fact.fact_id, None),
        (named_fact.fact_id, None),
    }
    owners = await pool.fetch(
        "SELECT source_system FROM subject_owners WHERE patient_id = $1", patient
    )
    assert {r["source_system"] for r in owners} == {"hosp", named_fact.provenance.source_system}


@pytest.mark.asyncio
async def test_a_name_is_committed_before_the_transaction_that_uses_it(pool: asyncpg.Pool) -> None:
    """A save that rolls back must not leave this worker's cache naming an id that does not
    exist: the name's id is committed on its own, first."""
    names = StateNames(pool)
    name = f"rolled-back-{uuid.uuid4().hex[:8]}"
    async with pool.acquire() as conn:
        transaction = conn.transaction()
        await transaction.start()
        ids = await names.ids([name, None])
        await transaction.rollback()
    assert await pool.fetchval("SELECT id FROM state_names WHERE name = $1", name) == ids[name]
    async with pool.acquire() as conn:
        assert (await names.names(conn, [ids[name]]))[ids[name]] == name


_0019_HISTORY = """
INSERT INTO fact_history (fact_id, patient_id, attribute, attribute_class, source_system,
                          subject, value, display, status, event_time, received_time,
                          raw_offset, raw_partition, record_id, record_version, raw_topic,
                          payload_sha256, payload_digest, raw_location, event_time_basis,
                          provenance_extra, unit, effective_time)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19,
        $20, $21::jsonb, $22, $23)
"""
_0019_ASSERTION = """
INSERT INTO assertions (patient_id, attribute, source_system, kafka_partition, attribute_class,
                        fact_id, event_time, assertion, records)
VALUES ($1, $2, $3, 4, $4, $5, $6, $7::jsonb, $8::jsonb)
"""


@pytest.mark.asyncio
async def test_migration_0021_keeps_every_row_as_the_views_read_it(
    release_before: OpenRelease, fresh_dsn: str
) -> None:
    """Rows the 0019 layout holds (a fact with a hex id, one with another id, a history row with
    no basis and a digest that is not hex, a tombstone stored whole, a subject's owner) read
    the same, column for column, through the views after 0021; the store reads them back, and
    the migration keyed the other id as the store does."""
    conn, patient = await release_before("0021"), patient_id()
    hex_fact = fact(patient, "hosp", "1970-01-01")
    named = fact(patient, "lab", "1970-01-02", payload_sha256="md5:abc", event_time_basis=None)
    named = named.model_copy(update={"fact_id": "lab:Patient/7", "unit": "d", "effective_time": T0})
    for f in (hex_fact, named):
        p = f.provenance
        digest_is_hex = p.payload_sha256 == "0f" * 32
        await conn.execute(
            _0019_HISTORY, f.fact_id, patient, *BIRTH, p.source_system, f.subject, f.value,
            f.display, f.status, p.event_time, p.received_time, p.raw_offset, p.raw_partition,
            p.source_record_id, p.source_record_version, p.raw_topic,
            bytes.fromhex(p.payload_sha256) if digest_is_hex else None,
            None if digest_is_hex else p.payload_sha256, p.raw_location, p.event_time_basis,
            None, f.unit, f.effective_time,
        )  # fmt: skip
        await conn.execute(
            _0019_ASSERTION, patient, BIRTH[0], p.source_system, BIRTH[1], f.fact_id,
            p.event_time, None, None,
        )  # fmt: skip
    tombstone = as_assertion(hex_fact).model_copy(
        update={"fact_id": "merged-x", "value": None, "display": None, "status": "DELETED"}
    )
    await conn.execute(
        _0019_ASSERTION, patient, BIRTH[0], "clinic", BIRTH[1], tombstone.fact_id, T0,
        tombstone.model_dump_json(), None,
    )  # fmt: skip
    await conn.execute("INSERT INTO subject_owners VALUES ('lab', 'Patient/lab-x', $1)", patient)
    reads = {
        "fact_history": "SELECT * FROM fact_history ORDER BY fact_id",
        "assertions": "SELECT * FROM assertions ORDER BY source_system",
        "subject_owners": "SELECT * FROM subject_owners ORDER BY subject",
    }
    before = {name: [dict(r) for r in await conn.fetch(sql)] for name, sql in reads.items()}

    assert await apply_migrations(fresh_dsn) == [
        name for name, _ in migration_files() if name >= "0021"
    ]
    after = {name: [dict(r) for r in await conn.fetch(sql)] for name, sql in reads.items()}
    assert after == before
    assert len(after["fact_history"]) == 2 and len(after["assertions"]) == 3
    key = await conn.fetchval(
        "SELECT fact_key FROM fact_history_coded WHERE fact_name = $1", named.fact_id
    )
    assert (key.hex, named.fact_id) == fact_key(named.fact_id)
    pool = await asyncpg.create_pool(fresh_dsn, min_size=1, max_size=2)
    assert pool is not None
    try:
        store = ConflictStore(pool, Outbox(pool, "test"))
        state_key = (patient, BIRTH[0])
        loaded = (await store.load([state_key], {state_key: BIRTH[1]}))[state_key]
        assert loaded.assertions == {
            "hosp": as_assertion(hex_fact),
            "lab": as_assertion(named),
            "clinic": tombstone,
        }
    finally:
        await pool.close()


# --- migration 0023: a patient's assertions in one row ---------------------------------------

GLUCOSE = ("Observation/2345-7", "LABORATORY")


@pytest.mark.asyncio
async def test_a_patients_assertions_are_rows_that_each_save_merges_into(
    pool: asyncpg.Pool,
) -> None:
    """Saves of different attributes and sources of one patient add to its rows, one per block
    of attribute ids (none replaces another's entries); the view spells out a row per entry,
    and the store reads each back."""
    store = ConflictStore(pool, Outbox(pool, f"test-{uuid.uuid4().hex[:6]}"))
    patient = patient_id()
    birth, glucose = AttributeState(patient, *BIRTH), AttributeState(patient, *GLUCOSE)
    hosp, lab = fact(patient, "hosp", "1970-01-01"), fact(patient, "lab", "1970-01-02")
    result = fact(patient, "hosp", "104").model_copy(
        update={"attribute": GLUCOSE[0], "attribute_class": GLUCOSE[1], "unit": "mg/dL"}
    )
    apply_fact(birth, hosp)
    await store.save([(birth, "hosp", 5)], [], [], facts=[hosp])
    apply_fact(glucose, result)
    await store.save([(glucose, "hosp", 5)], [], [], facts=[result])
    apply_fact(birth, lab)
    await store.save([(birth, "lab", 5)], [], [], facts=[lab])

    rows = await pool.fetch(
        "SELECT attribute_block, names, fact_keys, documents FROM patient_assertions "
        "WHERE patient_id = $1",
        patient,
    )
    ids = await store.names.ids([BIRTH[0], GLUCOSE[0]])
    # A row per block of attribute ids the patient has assertions in (the ids depend on what
    # this database met first).
    blocks = {ids[BIRTH[0]] // ATTRIBUTE_BLOCK, ids[GLUCOSE[0]] // ATTRIBUTE_BLOCK}
    assert sorted(r["attribute_block"] for r in rows) == sorted(blocks)
    assert all(r["documents"] is None for r in rows)  # every entry is exactly its fact
    stored = {k.hex for r in rows for k in r["fact_keys"]}
    assert stored == {f.fact_id for f in (hosp, lab, result)}
    assert sum(len(r["names"]) for r in rows) == 3 * 3
    view = await pool.fetch(
        "SELECT attribute, attribute_class, source_system, kafka_partition, fact_id, event_time "
        "FROM assertions WHERE patient_id = $1",
        patient,
    )
    assert {tuple(r) for r in view} == {
        (*BIRTH, "hosp", 5, hosp.fact_id, T0),
        (*BIRTH, "lab", 5, lab.fact_id, T0),
        (*GLUCOSE, "hosp", 5, result.fact_id, T0),
    }
    keys = [(patient, BIRTH[0]), (patient, GLUCOSE[0])]
    loaded = await store.load(keys, {keys[0]: BIRTH[1], keys[1]: GLUCOSE[1]})
    assert loaded[keys[0]].assertions == birth.assertions
    assert loaded[keys[1]].assertions == glucose.assertions
    assert await store.attributes_of([patient]) == {keys[0]: BIRTH[1], keys[1]: GLUCOSE[1]}


@pytest.mark.asyncio
async def test_a_new_patient_another_transaction_wrote_meanwhile_is_merged_not_overwritten(
    pool: asyncpg.Pool,
) -> None:
    """A patient with no row yet cannot be locked: if another transaction writes its row while
    this save runs, the save waits for it, finds the row it did not lock, and merges into it
    again (the other source's assertion stays)."""
    patient = patient_id()
    first, second = fact(patient, "hosp", "1970-01-01"), fact(patient, "lab", "1970-01-02")
    late = AttributeState(patient, *BIRTH)
    apply_fact(late, second)
    store = ConflictStore(pool, Outbox(pool, f"test-{uuid.uuid4().hex[:6]}"))
    ids = await store.names.ids([*BIRTH, "hosp"])
    # The other writer's entry, whole in a document (no history row needed).
    document = {"assertion": as_assertion(first).model_dump(mode="json")}
    written = orjson.dumps({f"{ids[BIRTH[0]]}:{ids['hosp']}": document}).decode()

    async with pool.acquire() as other:
        transaction = other.transaction()
        await transaction.start()
        await other.execute(
            "INSERT INTO patient_assertions VALUES (1, $1, $2, $3, $4, $5, $6::jsonb)",
            ids[BIRTH[0]] // ATTRIBUTE_BLOCK,
            patient,
            [ids[BIRTH[0]], ids["hosp"], ids[BIRTH[1]]],
            [uuid.UUID(first.fact_id)],
            [first.provenance.event_time],
            written,
        )
        saving = asyncio.create_task(store.save([(late, "lab", 1)], [], [], facts=[second]))
        await asyncio.sleep(0.5)
        assert not saving.done()  # waiting for the other transaction's row
        await transaction.commit()
    await asyncio.wait_for(saving, 10)

    key = (patient, BIRTH[0])
    loaded = (await store.load([key], {key: BIRTH[1]}))[key]
    assert loaded.assertions == {"hosp": as_assertion(first), "lab": as_assertion(second)}
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM patient_assertions WHERE patient_id = $1", patient
        )
        == 1
    )


_0021_HISTORY = """
INSERT INTO fact_history_coded (fact_key, patient_id, attribute_id, attribute_class_id,
                                source_id, subject, value, display, status_id, event_time,
                                received_time, record_id, record_version, raw_topic_id,
                                raw_partition, raw_offset, payload_sha256, event_time_basis_id,
                                raw_location)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)
"""
_0021_ASSERTION = """
INSERT INTO assertions_coded (patient_id, attribute_id, source_id, kafka_partition,
                              attribute_class_id, fact_key, event_time, assertion, records)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9::jsonb)
"""


@pytest.mark.asyncio
async def test_migration_0023_keeps_every_assertion_as_the_view_reads_it(
    release_before: OpenRelease, fresh_dsn: str
) -> None:
    """Rows of the 0021 layout (a row per patient, attribute and source: facts referred to by
    key, one with the source's records beside it, a tombstone stored whole, two attributes,
    two patients) read the same through the view after 0023, which makes one row a patient;
    the store reads them back."""
    conn = await release_before("0023")
    names = ["hosp", "lab", "clinic", *BIRTH, *GLUCOSE, "ASSERTED", "ehr.raw.fhir",
             "meta.lastUpdated"]  # fmt: skip
    await conn.execute(
        "INSERT INTO state_names (name) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING", names
    )
    ids = {r["name"]: r["id"] for r in await conn.fetch("SELECT id, name FROM state_names")}
    one, two = patient_id(), patient_id()
    hosp, lab = fact(one, "hosp", "1970-01-01"), fact(one, "lab", "1970-01-02")
    result = fact(one, "hosp", "104").model_copy(
        update={"attribute": GLUCOSE[0], "attribute_class": GLUCOSE[1]}
    )
    other = fact(two, "lab", "1980-05-05")
    for f in (hosp, lab, result, other):
        p = f.provenance
        await conn.execute(
            _0021_HISTORY, uuid.UUID(f.fact_id), f.patient_id, ids[f.attribute],
            ids[f.attribute_class], ids[p.source_system], f.subject, f.value, f.display,
            ids["ASSERTED"], p.event_time, p.received_time, p.source_record_id,
            p.source_record_version, ids[p.raw_topic], p.raw_partition, p.raw_offset,
            bytes.fromhex(p.payload_sha256), ids["meta.lastUpdated"], p.raw_location,
        )  # fmt: skip
    records = orjson.dumps([as_assertion(lab).model_dump(mode="json", exclude_defaults=True)])
    tombstone = as_assertion(hosp).model_copy(
        update={"fact_id": "merged-y", "value": None, "display": None, "status": "DELETED"}
    )
    entries = [
        (one, BIRTH, "hosp", 2, hosp.fact_id, None, None),
        (one, BIRTH, "lab", 2, lab.fact_id, None, records.decode()),
        (one, BIRTH, "clinic", 2, tombstone.fact_id, tombstone.model_dump_json(), None),
        (one, GLUCOSE, "hosp", 2, result.fact_id, None, None),
        (two, BIRTH, "lab", 3, other.fact_id, None, None),
    ]
    for patient, (attribute, attribute_class), source, partition, fact_id, doc, kept in entries:
        await conn.execute(
            _0021_ASSERTION, patient, ids[attribute], ids[source], partition,
            ids[attribute_class], uuid.UUID(fact_key(fact_id)[0]), T0, doc, kept,
        )  # fmt: skip
    read = "SELECT * FROM assertions ORDER BY patient_id, attribute, source_system"
    before = [dict(r) for r in await conn.fetch(read)]

    assert await apply_migrations(fresh_dsn) == [
        name for name, _ in migration_files() if name >= "0023"
    ]
    after = [dict(r) for r in await conn.fetch(read)]
    assert after == before and len(after) == 5
    rows = await conn.fetch(
        "SELECT patient_id, attribute_block, kafka_partition FROM patient_assertions"
    )
    blocks = {ids[BIRTH[0]] // ATTRIBUTE_BLOCK, ids[GLUCOSE[0]] // ATTRIBUTE_BLOCK}
    expected = [(one, block, 2) for block in blocks] + [(two, ids[BIRTH[0]] // ATTRIBUTE_BLOCK, 3)]
    assert sorted(tuple(r) for r in rows) == sorted(expected)
    pool = await asyncpg.create_pool(fresh_dsn, min_size=1, max_size=2)
    assert pool is not None
    try:
        store = ConflictStore(pool, Outbox(pool, "test"))
        keys = [(one, BIRTH[0]), (one, GLUCOSE[0]), (two, BIRTH[0])]
        loaded = await store.load(keys, {keys[0]: BIRTH[1], keys[1]: GLUCOSE[1], keys[2]: BIRTH[1]})
        assert loaded[keys[0]].assertions == {
            "hosp": as_assertion(hosp),
            "lab": as_assertion(lab),
            "clinic": tombstone,
        }
        kept = as_assertion(lab)
        assert loaded[keys[0]].records == {"lab": {record_key(kept): kept}}
        assert loaded[keys[1]].assertions == {"hosp": as_assertion(result)}
        assert loaded[keys[2]].assertions == {"lab": as_assertion(other)}
    finally:
        await pool.close()
