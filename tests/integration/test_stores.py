"""The PostgreSQL adapters against a real server, and the outbox against the real broker."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from builders import FakeProducer, raw
from concord.alerting.lifecycle import apply_conflict_event
from concord.alerting.store import AlertStore, list_alerts
from concord.conflicts.app import ConflictsStage
from concord.conflicts.policy import DEFAULT_POLICY
from concord.conflicts.rules import AttributeState, apply_fact, evaluate
from concord.conflicts.store import ConflictStore
from concord.events import codec
from concord.events.models import MERGE_ATTRIBUTE, ClinicalFact, ConflictEvent, Provenance
from concord.normalization.facts.drafts import unmerge_fact
from concord.runtime.batch import Outbound, OutboundRecord, run_batch
from concord.runtime.outbox import Outbox
from concord.stack.broker import BrokerInfo
from concord.topics import FACTS

pytestmark = pytest.mark.integration

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def fact(
    patient: str, source: str, value: str, *, at: datetime, version: str = "1"
) -> ClinicalFact:
    return ClinicalFact(
        fact_id=f"{patient}-{source}-{version}",
        patient_id=patient,
        attribute="Patient.birthDate",
        attribute_class="DEMOGRAPHICS",
        value=value,
        display=value,
        status="ASSERTED",
        provenance=Provenance(
            source_system=source,
            source_record_id=f"Patient/{source}-{patient}",
            source_record_version=version,
            event_time=at,
            received_time=at + timedelta(seconds=5),
            raw_topic="ehr.raw.fhir",
            raw_partition=1,
            raw_offset=42,
            payload_sha256="ab" * 32,
        ),
    )


def patient_id() -> str:
    return f"EPS-{uuid.uuid4().hex[:10]}"


@pytest.mark.asyncio
async def test_conflict_state_round_trips_through_postgres(pool: asyncpg.Pool) -> None:
    store = ConflictStore(pool, Outbox(pool, f"test-{uuid.uuid4().hex[:6]}"))
    patient = patient_id()
    key = (patient, "Patient.birthDate")
    state = AttributeState(patient, "Patient.birthDate", "DEMOGRAPHICS")
    apply_fact(state, fact(patient, "a", "1970-01-01", at=T0))
    apply_fact(state, fact(patient, "b", "1971-01-01", at=T0))
    event = evaluate(state, DEFAULT_POLICY, now=T0, trigger_received_time=T0)
    assert event is not None and event.kind == "OPENED"
    await store.save([(state, "a", 3), (state, "b", 3)], [(state, 3)], [])

    loaded = (await store.load([key], {key: "DEMOGRAPHICS"}))[key]
    assert loaded.assertions == state.assertions
    assert loaded.conflict == state.conflict
    # What a merge needs to find: every attribute asserted of the patient.
    assert await store.attributes_of([patient, "nobody"]) == {key: "DEMOGRAPHICS"}


def episode(
    patient: str, record: str, status: str, *, at: datetime, version: str = "1"
) -> ClinicalFact:
    base = fact(patient, "ehr", status, at=at, version=version)
    return base.model_copy(
        update={
            "fact_id": f"{patient}-{record}-{version}",
            "attribute": "Condition/J45.909",
            "attribute_class": "CONDITION",
            "provenance": base.provenance.model_copy(update={"source_record_id": record}),
        }
    )


@pytest.mark.asyncio
async def test_a_sources_records_of_one_concept_round_trip_and_its_belief_moves_forward(
    pool: asyncpg.Pool,
) -> None:
    """Several records of one condition (issue 13, item 2) are stored with the belief; after
    the newest, active, episode is withdrawn, the belief falls back to an older record and a
    stale cache still cannot write what went before."""
    store = ConflictStore(pool, Outbox(pool, f"test-{uuid.uuid4().hex[:6]}"))
    patient = patient_id()
    key = (patient, "Condition/J45.909")
    state = AttributeState(patient, key[1], "CONDITION")
    apply_fact(state, episode(patient, "Condition/1", "resolved", at=T0))
    apply_fact(state, episode(patient, "Condition/2", "active", at=T0 + timedelta(days=9)))
    await store.save([(state, "ehr", 0)], [], [])
    loaded = (await store.load([key], {key: "CONDITION"}))[key]
    assert loaded.assertions == state.assertions
    assert loaded.records == state.records and set(loaded.records["ehr"]) == {
        "Condition/1",
        "Condition/2",
    }

    stale_cache = AttributeState(patient, key[1], "CONDITION")
    apply_fact(stale_cache, episode(patient, "Condition/2", "active", at=T0 + timedelta(days=9)))
    withdrawn = episode(patient, "Condition/2", "active", at=T0 + timedelta(days=20), version="2")
    apply_fact(loaded, withdrawn.model_copy(update={"status": "ENTERED_IN_ERROR"}))
    assert loaded.assertions["ehr"].provenance.source_record_id == "Condition/1"
    await store.save([(loaded, "ehr", 0)], [], [])
    await store.save([(stale_cache, "ehr", 0)], [], [])  # refused: the source moved on

    again = (await store.load([key], {key: "CONDITION"}))[key]
    assert again.assertions["ehr"].value == "resolved"
    assert again.records_of("ehr")["Condition/2"].status == "ENTERED_IN_ERROR"


@pytest.mark.asyncio
async def test_an_older_assertion_never_overwrites_a_newer_one(pool: asyncpg.Pool) -> None:
    store = ConflictStore(pool, Outbox(pool, f"test-{uuid.uuid4().hex[:6]}"))
    patient = patient_id()
    key = (patient, "Patient.birthDate")
    newer = AttributeState(patient, "Patient.birthDate", "DEMOGRAPHICS")
    apply_fact(newer, fact(patient, "a", "1970-01-02", at=T0 + timedelta(days=1), version="2"))
    await store.save([(newer, "a", 0)], [], [])
    # A second worker holding stale memory writes the older version: the database refuses it.
    older = AttributeState(patient, "Patient.birthDate", "DEMOGRAPHICS")
    apply_fact(older, fact(patient, "a", "1970-01-01", at=T0, version="1"))
    await store.save([(older, "a", 0)], [], [])

    loaded = (await store.load([key], {key: "DEMOGRAPHICS"}))[key]
    assert loaded.assertions["a"].value == "1970-01-02"


@pytest.mark.asyncio
async def test_outbox_rows_left_by_a_crash_are_published_once(
    pool: asyncpg.Pool, broker: BrokerInfo
) -> None:
    stage = f"test-{uuid.uuid4().hex[:6]}"
    topic = "concord.conflicts"
    marker = uuid.uuid4().hex.encode()
    records = [OutboundRecord(topic, marker + bytes([i]), key=marker) for i in range(3)]
    crashed = Outbox(pool, stage)
    async with pool.acquire() as conn, conn.transaction():
        await crashed.write(conn, records)
    crashed.publish_written(Outbound(stage), records)  # ...and the process dies before acks

    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers)
    await producer.start()
    try:
        successor = Outbox(pool, stage)
        assert await successor.drain(producer) == 3
        assert await successor.drain(producer) == 0
    finally:
        await producer.stop()
    assert await pool.fetchval("SELECT count(*) FROM outbox WHERE stage = $1", stage) == 0

    consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap_servers, fetch_max_wait_ms=50)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(4)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        seen: list[bytes] = []
        for _ in range(20):
            batch = await consumer.getmany(timeout_ms=200)
            seen += [r.value for recs in batch.values() for r in recs if r.key == marker]
    finally:
        await consumer.stop()
    assert sorted(seen) == sorted(r.value for r in records)


@pytest.mark.asyncio
async def test_alerts_and_their_history_are_stored_once_per_revision(pool: asyncpg.Pool) -> None:
    store = AlertStore(pool, Outbox(pool, f"test-{uuid.uuid4().hex[:6]}"))
    patient = patient_id()
    state = AttributeState(patient, "Patient.birthDate", "DEMOGRAPHICS")
    apply_fact(state, fact(patient, "a", "1970-01-01", at=T0))
    apply_fact(state, fact(patient, "b", "1971-01-01", at=T0))
    opened = evaluate(state, DEFAULT_POLICY, now=T0, trigger_received_time=T0)
    assert opened is not None
    first = apply_conflict_event(None, opened, now=T0)
    assert first is not None
    await store.save([(first, "opened")], [(first.alert, "opened")], [])
    # Redelivered: the stored revision guards the row, the history key guards the log.
    await store.save([(first, "opened")], [(first.alert, "opened")], [])

    loaded = await store.load([opened.conflict_id])
    assert loaded[opened.conflict_id] == first
    listed = [r for r in await list_alerts(pool, status="OPEN") if r.alert.patient_id == patient]
    assert [r.alert.alert_id for r in listed] == [opened.conflict_id]
    history = await pool.fetchval(
        "SELECT count(*) FROM alert_history WHERE alert_id = $1", opened.conflict_id
    )
    assert history == 1


def _subject_fact(
    patient: str, source: str, subject: str, value: str, *, minutes: int, version: str = "1"
) -> ClinicalFact:
    made = fact(patient, source, value, at=T0 + timedelta(minutes=minutes), version=version)
    return made.model_copy(
        update={"subject": subject, "fact_id": f"{subject}-{source}-{version}-{patient}"}
    )


async def _run_stage(stage: ConflictsStage, facts: list[ClinicalFact]) -> list[ConflictEvent]:
    encoded = [codec.CLINICAL_FACT.encode(f) for f in facts]
    out = await run_batch(stage, [raw(v, topic=FACTS, offset=i) for i, v in enumerate(encoded)])
    return [codec.CONFLICT_EVENT.decode(r.value) for r in out.pending]


@pytest.mark.asyncio
async def test_an_unmerge_rebuilds_both_patients_from_the_fact_history(
    pool: asyncpg.Pool,
) -> None:
    absorbed, survivor = patient_id(), patient_id()
    outbox = Outbox(pool, "conflicts")
    stage = ConflictsStage(ConflictStore(pool, outbox), outbox, FakeProducer(), DEFAULT_POLICY)
    # The absorbed patient's two sources disagree; the survivor's agree.
    before = [
        _subject_fact(absorbed, "hosp", f"Patient/1-{absorbed}", "1980-01-01", minutes=1),
        _subject_fact(absorbed, "lab", f"Patient/L1-{absorbed}", "1980-01-02", minutes=1),
        _subject_fact(survivor, "hosp", f"Patient/2-{absorbed}", "1990-02-02", minutes=2),
        _subject_fact(survivor, "clinic", f"Patient/C2-{absorbed}", "1990-02-02", minutes=2),
    ]
    [opened] = await _run_stage(stage, before)
    assert (opened.patient_id, opened.kind) == (absorbed, "OPENED")

    merge = fact(survivor, "hosp", absorbed, at=T0 + timedelta(minutes=3)).model_copy(
        update={"attribute": MERGE_ATTRIBUTE, "fact_id": f"merge-{absorbed}"}
    )
    # After the merge, normalization files the lab's next result under the survivor.
    later = _subject_fact(
        survivor, "lab", f"Patient/L1-{absorbed}", "1980-01-02", minutes=5, version="2"
    )
    merged = await _run_stage(stage, [merge, later])
    assert sorted((e.patient_id == survivor, e.kind) for e in merged) == [
        (False, "RESOLVED"),
        (True, "OPENED"),
    ]

    unmerge = unmerge_fact(
        survivor=survivor, absorbed=absorbed, action_id="test", at=T0 + timedelta(minutes=6)
    )
    stage.cache.clear()  # as after a restart: the store alone must know what to rebuild
    events = await _run_stage(stage, [unmerge])
    by_patient = {e.patient_id: e for e in events}
    assert by_patient[survivor].kind == "RESOLVED"
    assert by_patient[absorbed].kind == "OPENED"
    # The lab's post-merge result went back with its subject; hosp's older fact came back.
    restored = {a.source_system: a.fact_id for a in by_patient[absorbed].assertions}
    assert restored == {"hosp": before[0].fact_id, "lab": later.fact_id}
    kept = {a.source_system: (a.status, a.fact_id) for a in by_patient[survivor].assertions}
    assert kept["hosp"] == ("ASSERTED", before[2].fact_id)
    assert kept["lab"][0] == "DELETED"
    owner = await pool.fetchval(
        "SELECT patient_id FROM subject_owners WHERE source_system = 'lab' AND subject = $1",
        f"Patient/L1-{absorbed}",
    )
    assert owner == absorbed
    stage.cache.clear()
    assert await _run_stage(stage, [unmerge]) == []  # redelivered: nothing new
    stored = await ConflictStore(pool, outbox).load(
        [(absorbed, "Patient.birthDate")], {(absorbed, "Patient.birthDate"): "DEMOGRAPHICS"}
    )
    assert stored[(absorbed, "Patient.birthDate")].assertions["hosp"].fact_id == before[0].fact_id


@pytest.mark.asyncio
async def test_the_staleness_timer_raises_a_medication_nobody_reconfirmed(
    pool: asyncpg.Pool,
) -> None:
    """Reconfirmation due three seconds from now: nothing at first, then the timer (an indexed read
    of what is due on the owned partitions) raises it once, and clears its row."""
    patient = patient_id()
    outbox = Outbox(pool, "conflicts")
    # Without the class's hold, which the held-disagreement test below covers.
    medications = DEFAULT_POLICY.classes["MEDICATION"].model_copy(
        update={"suppress_for": timedelta(0)}
    )
    policy = DEFAULT_POLICY.model_copy(
        update={"classes": {**DEFAULT_POLICY.classes, "MEDICATION": medications}}
    )
    stage = ConflictsStage(ConflictStore(pool, outbox), outbox, FakeProducer(), policy)
    window = policy.classes["MEDICATION"].reconfirm_within
    assert window is not None
    said = datetime.now(UTC) - window + timedelta(seconds=3)
    medication = fact(patient, "clinic-ehr", "active", at=said).model_copy(
        update={
            "attribute": "Medication/6809",
            "attribute_class": "MEDICATION",
            "fact_id": f"{patient}-metformin",
        }
    )
    assert await _run_stage(stage, [medication]) == []
    due = await pool.fetchval("SELECT due_at FROM stale_timers WHERE patient_id = $1", patient)
    assert due == said + window

    partitions = {0}
    await asyncio.sleep(max(0.0, (due - datetime.now(UTC)).total_seconds()) + 0.2)
    out = Outbound("conflicts")
    await stage.on_tick(partitions, out)
    # Other tests' timers share the session database: this patient's events only.
    decoded = [codec.CONFLICT_EVENT.decode(r.value) for r in out.pending]
    [stale] = [e for e in decoded if e.patient_id == patient]
    assert (stale.kind, stale.patient_id, stale.attribute) == ("STALE", patient, "Medication/6809")
    assert (
        await pool.fetchval("SELECT count(*) FROM stale_timers WHERE patient_id = $1", patient) == 0
    )
    again = Outbound("conflicts")
    await stage.on_tick(partitions, again)
    assert [
        r for r in again.pending if codec.CONFLICT_EVENT.decode(r.value).patient_id == patient
    ] == []

    # The clinic confirms it: the stale record resolves, and a new window starts.
    confirmed = medication.model_copy(
        update={"fact_id": f"{patient}-metformin-2", "provenance": medication.provenance.model_copy(
            update={"event_time": datetime.now(UTC)})}
    )  # fmt: skip
    [resolved] = await _run_stage(stage, [confirmed])
    assert (resolved.kind, resolved.conflict_id) == ("RESOLVED", stale.conflict_id)
    assert (
        await pool.fetchval("SELECT count(*) FROM stale_timers WHERE patient_id = $1", patient) == 1
    )


@pytest.mark.asyncio
async def test_a_held_disagreement_is_raised_by_the_timer_or_dropped_unraised(
    pool: asyncpg.Pool,
) -> None:
    """suppress_for through PostgreSQL: the hold is a row that survives the cache (a restart),
    the timer raises what lasted, and what went away in time raises nothing at all."""
    lasting, passing = patient_id(), patient_id()
    demographics = DEFAULT_POLICY.classes["DEMOGRAPHICS"]
    window = timedelta(seconds=1)
    policy = DEFAULT_POLICY.model_copy(
        update={
            "classes": {"DEMOGRAPHICS": demographics.model_copy(update={"suppress_for": window})},
            "attributes": {},
        }
    )
    outbox = Outbox(pool, "conflicts")
    stage = ConflictsStage(ConflictStore(pool, outbox), outbox, FakeProducer(), policy)
    at = datetime.now(UTC)
    first = [
        fact(lasting, "hosp", "1980-01-01", at=at),
        fact(lasting, "lab", "1980-01-02", at=at),
        fact(passing, "hosp", "1990-02-02", at=at),
        fact(passing, "lab", "1990-02-03", at=at),
    ]
    assert await _run_stage(stage, first) == []
    held = await pool.fetch(
        "SELECT patient_id, source_system FROM held_records WHERE patient_id = ANY($1::text[])",
        [lasting, passing],
    )
    assert sorted((r["patient_id"], r["source_system"]) for r in held) == sorted(
        [(lasting, ""), (passing, "")]
    )
    # The lab corrects itself within the window: the passing disagreement never fires.
    correction = fact(passing, "lab", "1990-02-02", at=at + timedelta(seconds=1), version="2")
    assert await _run_stage(stage, [correction]) == []
    stage.cache.clear()  # as after a restart: the holds are in PostgreSQL

    await asyncio.sleep(window.total_seconds() + 0.3)
    out = Outbound("conflicts")
    await stage.on_tick({0}, out)
    mine = [
        e
        for e in (codec.CONFLICT_EVENT.decode(r.value) for r in out.pending)
        if e.patient_id in (lasting, passing)
    ]
    assert [(e.patient_id, e.kind, e.revision) for e in mine] == [(lasting, "OPENED", 1)]
    left = await pool.fetchval(
        "SELECT count(*) FROM held_records WHERE patient_id = ANY($1::text[])", [lasting, passing]
    )
    assert left == 0
    timers = await pool.fetchval(
        "SELECT count(*) FROM stale_timers WHERE patient_id = ANY($1::text[])", [lasting, passing]
    )
    assert timers == 0
