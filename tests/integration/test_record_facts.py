"""What source records asserted, in a real PostgreSQL (migration 0008): remembered per
record, replaced by a newer upsert only, found by key, a batch in one statement; and the
normalization stage on it and the identity index."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from builders import ingested_fhir, raw
from concord.config import NormalizationSettings
from concord.events import codec
from concord.events.models import ClinicalFact, IngestedRecord
from concord.normalization.app import NormalizationStage
from concord.normalization.facts.withdrawals import Remembered, RememberedFact
from concord.normalization.identity_store import PostgresIdentityStore
from concord.normalization.record_facts import PostgresRecordFacts
from concord.normalization.terminology import Terminology
from concord.runtime.batch import run_batch
from concord.topics import FACTS, INGESTED

pytestmark = pytest.mark.integration

T0 = datetime(2024, 3, 1, 12, tzinfo=UTC)
MPI = "urn:concord:enterprise-patient-id"


def _source() -> str:
    # The database is shared by the session's tests: each test its own source.
    return f"ehr-{uuid.uuid4().hex[:8]}"


def _memory(
    source: str,
    record: str,
    attributes: tuple[str, ...],
    *,
    at: datetime = T0,
    patient: str = "E-1",
    subject: str | None = "Patient/p1",
) -> Remembered:
    return Remembered(
        key=(source, record),
        patient_id=patient,
        subject=subject,
        event_time=at,
        facts=tuple(RememberedFact(a, "CONDITION") for a in attributes),
    )


@pytest.mark.asyncio
async def test_recall_finds_what_was_remembered_by_key(pool: asyncpg.Pool) -> None:
    store, source = PostgresRecordFacts(pool), _source()
    condition = _memory(source, "Condition/c1", ("Condition/E11.9", "Condition/I10"))
    claim = _memory(source, "ClaimLine/CL-1/1", ("Condition/J45.40",), subject=None)
    await store.remember([condition, claim])
    found = await store.recall([condition.key, claim.key, (source, "Condition/unknown")])
    assert found == {condition.key: condition, claim.key: claim}
    assert await store.recall([(_source(), "Condition/c1")]) == {}  # another source's record
    assert await store.recall([]) == {}
    await store.remember([])  # nothing to write is no statement at all


@pytest.mark.asyncio
async def test_a_newer_upsert_replaces_an_older_one_never_the_reverse(pool: asyncpg.Pool) -> None:
    store, source = PostgresRecordFacts(pool), _source()
    first = _memory(source, "Condition/c1", ("Condition/A", "Condition/B"))
    newer = _memory(source, "Condition/c1", ("Condition/A",), at=T0 + timedelta(days=1))
    late = _memory(source, "Condition/c1", ("Condition/Z",), at=T0 + timedelta(hours=1))
    await store.remember([first])
    await store.remember([newer])
    await store.remember([late])  # an older version arriving late
    assert await store.recall([first.key]) == {first.key: newer}
    moved = _memory(source, "Condition/c1", ("Condition/C",), at=newer.event_time, patient="E-2")
    await store.remember([moved])  # the same event time: the later write stands
    assert await store.recall([first.key]) == {first.key: moved}


@pytest.mark.asyncio
async def test_a_batch_of_many_records_with_repeats_is_one_statement(pool: asyncpg.Pool) -> None:
    store, source = PostgresRecordFacts(pool), _source()
    batch = [
        _memory(source, f"Condition/c{n}", (f"Condition/X{n % 7}",), at=T0 + timedelta(n))
        for n in range(2000)
    ]
    # Two versions of one record in one batch: an upsert may touch a row once per statement.
    repeat = _memory(source, "Condition/c5", ("Condition/R",), at=T0 + timedelta(days=9000))
    await store.remember([*batch, repeat])
    found = await store.recall([m.key for m in batch])
    assert len(found) == 2000
    assert found[repeat.key] == repeat
    assert found[batch[1999].key] == batch[1999]


@pytest.mark.asyncio
async def test_recall_names_whom_the_identity_index_links_the_subject_to_now(
    pool: asyncpg.Pool,
) -> None:
    store, source = PostgresRecordFacts(pool), _source()
    memory = _memory(source, "Observation/o1", ("Observation/2345-7",), patient="E-prov")
    await store.remember([memory])
    [found] = (await store.recall([memory.key])).values()
    assert found.linked_patient_id is None
    await pool.execute(
        "INSERT INTO identity_links (source, local_id, enterprise_id, decided_by) "
        "VALUES ($1, $2, $3, 'MERGED')",
        source,
        "Patient/p1",
        "E-100",
    )
    [found] = (await store.recall([memory.key])).values()
    assert (found.patient_id, found.linked_patient_id) == ("E-prov", "E-100")


@pytest.mark.asyncio
async def test_the_stage_withdraws_a_result_from_the_patient_that_placed_it(
    pool: asyncpg.Pool,
) -> None:
    """A result read before its Patient got a provisional id; the Patient (with its MPI id)
    absorbed that id since; the result's delete goes to the MPI id, where the conflicts stage
    moved the result's assertion."""
    source, enterprise = _source(), f"E-{uuid.uuid4().hex[:8]}"
    glucose = {
        "resourceType": "Observation",
        "id": "o1",
        "meta": {"versionId": "1", "lastUpdated": "2024-03-01T12:00:00Z"},
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
        "subject": {"reference": "Patient/p1"},
        "valueQuantity": {"value": 5.5, "unit": "mmol/L"},
    }
    patient = {
        "resourceType": "Patient",
        "id": "p1",
        "meta": {"versionId": "1", "lastUpdated": "2024-03-02T12:00:00Z"},
        "identifier": [{"system": MPI, "value": enterprise}],
        "name": [{"family": "Quorvath", "given": ["Ana"]}],
        "gender": "female",
        "birthDate": "1961-07-08",
    }
    delete = {
        "resourceType": "Bundle",
        "type": "history",
        "entry": [
            {
                "request": {"method": "DELETE", "url": "Observation/o1"},
                "response": {"status": "204", "lastModified": "2024-03-05T00:00:00Z"},
            }
        ],
    }
    stage = NormalizationStage(
        NormalizationSettings(enterprise_id_systems=[MPI], database_url="postgresql://unused"),
        PostgresIdentityStore(pool),
        Terminology.load(),
        record_facts=PostgresRecordFacts(pool),
    )
    [result] = await _facts(stage, ingested_fhir(glucose, source))
    assert "PROVISIONAL_PATIENT" in result.flags
    await _facts(stage, ingested_fhir(patient, source))
    [withdrawn] = await _facts(stage, ingested_fhir(delete, source))
    assert (withdrawn.attribute, withdrawn.status) == (result.attribute, "DELETED")
    assert withdrawn.patient_id == enterprise != result.patient_id
    again = await _facts(stage, ingested_fhir(delete, source))
    assert again == [withdrawn]  # redelivered: the same fact


async def _facts(stage: NormalizationStage, record: IngestedRecord) -> list[ClinicalFact]:
    consumed = raw(codec.INGESTED_RECORD.encode(record), topic=INGESTED)
    out = await run_batch(stage, [consumed])
    return [codec.CLINICAL_FACT.decode(r.value) for r in out.pending if r.topic == FACTS]
