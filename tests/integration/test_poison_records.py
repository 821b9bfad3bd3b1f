"""A record that a stage cannot process for a reason that will not pass (PostgreSQL refuses
its value) is isolated from its batch and dead-lettered; the rest of the batch goes on
(issue 15, item 2). Run through `run_batch`, which drives a stage as the batch loop does,
against the real PostgreSQL."""

from __future__ import annotations

import asyncpg
import pytest
from test_stores import T0, fact, patient_id

from builders import FakeProducer, raw
from concord.conflicts.app import ConflictsStage
from concord.conflicts.policy import DEFAULT_POLICY
from concord.conflicts.store import ConflictStore
from concord.events import codec
from concord.runtime.batch import run_batch
from concord.runtime.outbox import Outbox
from concord.topics import CONFLICTS, DEADLETTER, FACTS

pytestmark = pytest.mark.integration


@pytest.mark.asyncio
async def test_a_fact_postgresql_refuses_is_dead_lettered_and_the_batch_goes_on(
    pool: asyncpg.Pool,
) -> None:
    outbox = Outbox(pool, "conflicts")
    stage = ConflictsStage(ConflictStore(pool, outbox), outbox, FakeProducer(), DEFAULT_POLICY)
    before, poisoned, after = patient_id(), patient_id(), patient_id()
    facts = [
        fact(before, "hosp", "1980-01-01", at=T0),
        fact(before, "lab", "1980-01-02", at=T0),
        # NUL is valid in Avro and in JSON ("\u0000") but PostgreSQL text refuses it.
        fact(poisoned, "hosp", "1990-\x0002-02", at=T0),
        fact(after, "hosp", "2000-03-03", at=T0),
        fact(after, "lab", "2000-03-04", at=T0),
    ]
    events = [
        raw(codec.CLINICAL_FACT.encode(f), topic=FACTS, partition=0, offset=i, key=b"k")
        for i, f in enumerate(facts)
    ]

    out = await run_batch(stage, events)

    letters = [codec.DEAD_LETTER.decode(r.value) for r in out.pending if r.topic == DEADLETTER]
    assert [(d.original_offset, d.reason_code) for d in letters] == [(2, "CONFLICTS_FAILED")]
    assert letters[0].original_value == events[2].value
    assert "\x00" not in letters[0].reason and "1990" not in letters[0].reason
    opened = [codec.CONFLICT_EVENT.decode(r.value) for r in out.pending if r.topic == CONFLICTS]
    assert sorted(c.patient_id for c in opened) == sorted([before, after])
    # The refused record left nothing behind; its neighbours' state is stored.
    stored = await pool.fetch(
        "SELECT DISTINCT patient_id FROM assertions WHERE patient_id = ANY($1::text[])",
        [before, poisoned, after],
    )
    assert sorted(r["patient_id"] for r in stored) == sorted([before, after])
