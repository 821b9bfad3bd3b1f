"""A worker that lost its partitions in a rebalance it has not heard of yet cannot write over
its successor's state (issue 15, item 3): each assignment claims the partition's lease, and
each conflicts write checks it in its own transaction."""

from __future__ import annotations

import uuid

import asyncpg
import pytest
from test_stores import T0, fact, patient_id

from builders import FakeProducer, raw
from concord.conflicts.app import ConflictsStage
from concord.conflicts.policy import DEFAULT_POLICY
from concord.conflicts.store import ConflictStore
from concord.events import codec
from concord.events.models import ClinicalFact
from concord.events.raw import RawEvent
from concord.runtime.batch import run_batch
from concord.runtime.faults import PartitionLost
from concord.runtime.leases import PartitionLeases
from concord.runtime.outbox import Outbox
from concord.topics import FACTS

pytestmark = pytest.mark.integration


def _worker(pool: asyncpg.Pool, lease_stage: str) -> ConflictsStage:
    outbox = Outbox(pool, "conflicts")
    store = ConflictStore(pool, outbox, PartitionLeases(pool, lease_stage))
    return ConflictsStage(store, outbox, FakeProducer(), DEFAULT_POLICY)


def _batch(*facts: ClinicalFact) -> list[RawEvent]:
    return [
        raw(codec.CLINICAL_FACT.encode(f), topic=FACTS, partition=0, offset=i)
        for i, f in enumerate(facts)
    ]


async def _stored(pool: asyncpg.Pool, patient: str) -> dict[str, str]:
    # An assertion that is exactly its recorded fact keeps only the fact's id (migration 0019).
    rows = await pool.fetch(
        "SELECT a.source_system, CASE WHEN a.assertion IS NULL THEN h.value "
        "ELSE a.assertion ->> 'value' END AS value FROM assertions a "
        "LEFT JOIN fact_history h ON h.fact_id = a.fact_id WHERE a.patient_id = $1",
        patient,
    )
    return {r["source_system"]: r["value"] for r in rows}


@pytest.mark.asyncio
async def test_an_old_owner_cannot_write_after_another_worker_claimed_the_partition(
    pool: asyncpg.Pool,
) -> None:
    lease_stage = f"conflicts-{uuid.uuid4().hex[:8]}"
    old, new = _worker(pool, lease_stage), _worker(pool, lease_stage)
    patient = patient_id()
    await old.on_assigned({0})
    await run_batch(old, _batch(fact(patient, "hosp", "1980-01-01", at=T0)))
    assert await _stored(pool, patient) == {"hosp": "1980-01-01"}

    await new.on_assigned({0})  # a rebalance the old owner has not heard of yet
    later = T0.replace(hour=1)
    with pytest.raises(PartitionLost):
        await run_batch(old, _batch(fact(patient, "lab", "1980-01-02", at=later, version="2")))
    assert await _stored(pool, patient) == {"hosp": "1980-01-01"}  # nothing written
    assert old.cache == {}  # and nothing kept in memory

    # The new owner writes; and the old one, assigned the partition again, may too.
    await run_batch(new, _batch(fact(patient, "lab", "1980-01-02", at=later, version="2")))
    assert await _stored(pool, patient) == {"hosp": "1980-01-01", "lab": "1980-01-02"}
    await old.on_assigned({0})
    with pytest.raises(PartitionLost):
        await run_batch(new, _batch(fact(patient, "clinic", "1980-01-01", at=later)))
