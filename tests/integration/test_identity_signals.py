"""An identity decision other stages must hear of is never lost (issue 15, item 1): a merge
committed in PostgreSQL but never acknowledged by the broker (the worker died between the two)
is still published, by the worker that takes the partition over."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import pytest

from builders import FakeProducer, ingested_fhir, raw
from concord.config import NormalizationSettings
from concord.events import codec
from concord.events.models import MERGE_ATTRIBUTE, ClinicalFact
from concord.events.raw import RawEvent
from concord.normalization.app import NormalizationStage
from concord.normalization.identity_store import PostgresIdentityStore
from concord.normalization.record_facts import PostgresRecordFacts
from concord.normalization.terminology import Terminology
from concord.runtime.batch import Outbound, OutboundRecord, run_batch
from concord.runtime.outbox import Outbox
from concord.topics import FACTS, INGESTED

pytestmark = pytest.mark.integration


def _worker(pool: asyncpg.Pool) -> tuple[NormalizationStage, FakeProducer]:
    """A normalization worker as composition.build_normalization wires it."""
    identities = PostgresIdentityStore(pool)
    producer = FakeProducer()
    stage = NormalizationStage(
        NormalizationSettings(database_url="postgresql://unused"),
        identities,
        Terminology.load(),
        record_facts=PostgresRecordFacts(pool),
        identity_outbox=identities.outbox,
        producer=producer,
    )
    return stage, producer


def _patient(source: str, local: str, version: str, family: str, **extra: Any) -> RawEvent:
    document = {
        "resourceType": "Patient",
        "id": local,
        "meta": {"versionId": version, "lastUpdated": f"2024-03-0{version}T12:00:00Z"},
        "identifier": [{"system": f"urn:{source}:mrn", "value": local}],
        "name": [{"family": family, "given": ["Ana"]}],
        "gender": "female",
        "birthDate": "1961-07-08" if local == "old" else "1972-02-03",
        **extra,
    }
    record = ingested_fhir(document, source)
    return raw(codec.INGESTED_RECORD.encode(record), topic=INGESTED)


def _merges(values: list[bytes], of: str | None = None) -> list[ClinicalFact]:
    """The MERGE facts among `values`, of the survivor `of` (the database is shared by the
    session's tests: a drain publishes their leftovers too)."""
    facts = [codec.CLINICAL_FACT.decode(v) for v in values]
    return [f for f in facts if f.attribute == MERGE_ATTRIBUTE and of in (None, f.patient_id)]


def _facts_of(out: Outbound) -> list[bytes]:
    return [r.value for r in out.pending if r.topic == FACTS]


@pytest.mark.asyncio
async def test_a_merge_committed_but_never_acknowledged_is_published_by_the_next_owner(
    pool: asyncpg.Pool,
) -> None:
    source, run = f"ehr-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex[:6]
    first, _ = _worker(pool)
    absorbed = await run_batch(first, [_patient(source, "old", "1", f"Olden{run}")])
    survivor = await run_batch(first, [_patient(source, "new", "1", f"Newer{run}")])
    absorbed_id = codec.CLINICAL_FACT.decode(_facts_of(absorbed)[0]).patient_id
    survivor_id = codec.CLINICAL_FACT.decode(_facts_of(survivor)[0]).patient_id
    assert absorbed_id != survivor_id
    replaces = {"link": [{"type": "replaces", "other": {"reference": "Patient/old"}}]}
    merge = _patient(source, "new", "2", f"Newer{run}", **replaces)

    # The merge is committed; the worker dies before the broker acknowledged its output.
    died = await run_batch(first, [merge], acknowledged=False)
    [said] = _merges(_facts_of(died))
    assert (said.patient_id, said.value) == (survivor_id, absorbed_id)

    # The partition's next owner: whatever was left behind, then the redelivered batch.
    second, producer = _worker(pool)
    await second.on_assigned({0})
    redelivered = await run_batch(second, [merge])
    published = [value for topic, value, *_ in producer.sent if topic == FACTS]
    published += _facts_of(redelivered)
    assert [(m.patient_id, m.value, m.fact_id) for m in _merges(published, survivor_id)] == [
        (survivor_id, absorbed_id, said.fact_id)
    ]

    # Acknowledged, the signal leaves the outbox: a third owner publishes it no more.
    third, again = _worker(pool)
    await third.on_assigned({0})
    assert _merges([value for _, value, *_ in again.sent], survivor_id) == []


@pytest.mark.asyncio
async def test_outbox_rows_a_failed_pass_never_handed_over_stay_for_the_drain(
    pool: asyncpg.Pool,
) -> None:
    stage = f"test-{uuid.uuid4().hex[:8]}"
    outbox = Outbox(pool, stage)
    handed, failed = OutboundRecord(FACTS, b"handed"), OutboundRecord(FACTS, b"failed")
    async with pool.acquire() as conn, conn.transaction():
        await outbox.write(conn, [handed, failed])
    out = Outbound(stage)
    outbox.publish_written(out, [handed])  # the pass failed before handing `failed` over
    await out.flush(FakeProducer())
    await outbox.acknowledge()

    producer = FakeProducer()
    assert await outbox.drain(producer, older_than=3600) == 0  # not yet left behind
    assert await outbox.drain(producer) == 1
    assert [value for _, value, *_ in producer.sent] == [b"failed"]
    assert await pool.fetchval("SELECT count(*) FROM outbox WHERE stage = $1", stage) == 0


@pytest.mark.asyncio
async def test_outbox_rows_handed_to_a_pass_that_failed_later_stay_for_the_drain(
    pool: asyncpg.Pool,
) -> None:
    """A pass hands its merge signals over and then fails (a later record of the batch): the
    loop drops the pass's output unsent and goes on with the halves, and the acknowledgement
    of what it did send must not delete the rows whose records never went out."""
    stage = f"test-{uuid.uuid4().hex[:8]}"
    outbox = Outbox(pool, stage)
    dropped, sent = OutboundRecord(FACTS, b"dropped"), OutboundRecord(FACTS, b"sent")
    async with pool.acquire() as conn, conn.transaction():
        await outbox.write(conn, [dropped])
    outbox.publish_written(Outbound(stage), [dropped])  # the failed pass's output: never sent
    async with pool.acquire() as conn, conn.transaction():
        await outbox.write(conn, [sent])
    out = Outbound(stage)
    outbox.publish_written(out, [sent])  # the halves' pass
    await out.flush(FakeProducer())
    await outbox.acknowledge()

    producer = FakeProducer()
    assert await outbox.drain(producer) == 1
    assert [value for _, value, *_ in producer.sent] == [b"dropped"]
