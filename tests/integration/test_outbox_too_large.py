"""An outbox row too large to produce cannot wedge the outbox (issue 15: "one record can stop a
stage"). The producer refuses such a record in `send`, not transiently: a drain that sends
every row in one transaction used to raise on it for good, at every owner's start and every
timer, and the rows behind it stayed. Now the row is replaced by a dead letter naming it and
deleted with the others. Run against the real PostgreSQL and broker, with the workers' own
producer (BatchLoop.make_producer_for)."""

from __future__ import annotations

import hashlib
import uuid

import asyncpg
import pytest

from builders import FakeProducer
from concord.config import WorkerSettings
from concord.events import codec
from concord.events.models import DeadLetter
from concord.runtime.batch import MAX_RECORD_BYTES, BatchLoop, Outbound, OutboundRecord
from concord.runtime.outbox import Outbox
from concord.runtime.reading import read_topic
from concord.stack.broker import BrokerInfo
from concord.topics import CONFLICTS, DEADLETTER

pytestmark = pytest.mark.integration


def _rows(key: bytes) -> list[OutboundRecord]:
    """A conflict event too large to produce between two that are not."""
    big = b"C" * (MAX_RECORD_BYTES + 1)
    return [
        OutboundRecord(CONFLICTS, b"before", key=key),
        OutboundRecord(CONFLICTS, big, key=key),
        OutboundRecord(CONFLICTS, b"after", key=key),
    ]


async def _write(pool: asyncpg.Pool, outbox: Outbox, records: list[OutboundRecord]) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await outbox.write(conn, records)


async def _left(pool: asyncpg.Pool, stage: str) -> int:
    count = await pool.fetchval("SELECT count(*) FROM outbox WHERE stage = $1", stage)
    return int(count)


def _check_letter(letter: DeadLetter, *, stage: str, big: bytes) -> None:
    assert (letter.reason_code, letter.original_topic) == ("OUTPUT_TOO_LARGE", CONFLICTS)
    # Never on a topic: no partition or offset; the reason names the outbox row instead.
    assert (letter.original_partition, letter.original_offset) == (-1, -1)
    assert "outbox row " in letter.reason and f"the {stage} outbox" in letter.reason
    assert letter.original_value is None  # with the bytes it would be too large itself
    assert f"SHA-256 {hashlib.sha256(big).hexdigest()}" in letter.reason


@pytest.mark.asyncio
async def test_a_drain_dead_letters_an_outbox_row_too_large_to_produce_and_goes_on(
    pool: asyncpg.Pool, broker: BrokerInfo
) -> None:
    stage = f"oversize-{uuid.uuid4().hex[:8]}"
    key = f"patient-{uuid.uuid4().hex}".encode()
    outbox = Outbox(pool, stage)
    rows = _rows(key)
    await _write(pool, outbox, rows)
    producer = BatchLoop.make_producer_for(
        WorkerSettings(bootstrap_servers=broker.bootstrap_servers)
    )
    await producer.start()
    try:
        drained = await outbox.drain(producer)
    finally:
        await producer.stop()

    assert drained == 3
    assert await _left(pool, stage) == 0  # nothing left to wedge the next drain
    ours = await read_topic(broker.bootstrap_servers, CONFLICTS, keep=lambda r: r.key == key)
    assert [r.value for r in ours] == [b"before", b"after"]
    letters = await read_topic(broker.bootstrap_servers, DEADLETTER, keep=lambda r: r.key == key)
    [letter] = [codec.DEAD_LETTER.decode(r.value) for r in letters]
    _check_letter(letter, stage=stage, big=rows[1].value)


@pytest.mark.asyncio
async def test_a_batch_hands_over_a_dead_letter_for_an_outbox_row_too_large_to_produce(
    pool: asyncpg.Pool,
) -> None:
    """After the store's commit, the row's record cannot be refused by raising (the rows
    handed over before it would be deleted unsent): a letter takes its place in the batch,
    and acknowledging the batch deletes every row."""
    stage = f"oversize-{uuid.uuid4().hex[:8]}"
    outbox = Outbox(pool, stage)
    rows = _rows(b"patient-k")
    await _write(pool, outbox, rows)
    out = Outbound(stage)

    outbox.publish_written(out, rows)

    assert [(r.topic, r.value) for r in out.pending if r.topic == CONFLICTS] == [
        (CONFLICTS, b"before"),
        (CONFLICTS, b"after"),
    ]
    [letter] = [codec.DEAD_LETTER.decode(r.value) for r in out.pending if r.topic == DEADLETTER]
    _check_letter(letter, stage=stage, big=rows[1].value)
    await out.flush(FakeProducer())
    await outbox.acknowledge()
    assert await _left(pool, stage) == 0
