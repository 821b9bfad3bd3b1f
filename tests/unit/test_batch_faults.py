"""The batch loop's fault handling as pure control flow (issue 15, item 2): a record a stage
fails on is isolated and dead-lettered, a transient failure is retried with backoff while the
loop reports not ready, and a failed produce keeps its records to send again."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import asyncpg
import pytest
from aiokafka.errors import (
    KafkaConnectionError,
    MessageSizeTooLargeError,
    UnknownTopicOrPartitionError,
)
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata, TopicPartition
from prometheus_client import REGISTRY

from builders import FakeProducer, raw
from concord import metrics
from concord.config import IngestionSettings
from concord.events import codec
from concord.events.raw import RawEvent
from concord.runtime.batch import BatchLoop, Outbound, OutboundRecord, _Rebalance, run_batch
from concord.runtime.faults import Backoff, is_transient
from concord.runtime.stage import BaseStage
from concord.topics import CONFLICTS, DEADLETTER, FACTS

POISON = b"poison"
DSN = "postgresql://concord@127.0.0.1:1/concord"  # never connected to


class _FailsOnPoison(BaseStage):
    """Echoes every record to concord.conflicts; a batch holding POISON fails as a store
    write PostgreSQL refuses would."""

    stage = "conflicts"
    topics = (FACTS,)

    def __init__(self, failure: Exception | None = None) -> None:
        self.passes: list[int] = []
        self.failure = failure or ValueError("a value the store refuses")

    async def process(self, events: Sequence[RawEvent], out: Outbound) -> None:
        self.passes.append(len(events))
        for event in events:
            out.add(OutboundRecord(CONFLICTS, event.value or b""))
        if any(e.value == POISON for e in events):
            raise self.failure


def _events(values: Sequence[bytes]) -> list[RawEvent]:
    return [raw(v, topic=FACTS, offset=i) for i, v in enumerate(values)]


@pytest.mark.asyncio
async def test_a_record_the_stage_fails_on_is_dead_lettered_alone_and_its_neighbours_pass() -> None:
    stage = _FailsOnPoison()
    values = [b"a", b"b", b"c", b"d", b"e", POISON, b"g", b"h"]

    out = await run_batch(stage, _events(values))

    passed = [r.value for r in out.pending if r.topic == CONFLICTS]
    assert passed == [v for v in values if v != POISON]  # in order, nothing from failed passes
    [letter] = [codec.DEAD_LETTER.decode(r.value) for r in out.pending if r.topic == DEADLETTER]
    assert (letter.original_offset, letter.original_value) == (5, POISON)
    assert (letter.reason_code, letter.stage) == ("CONFLICTS_FAILED", "conflicts")
    assert letter.reason == "ValueError while the conflicts stage processed the record"
    # Halving: the whole batch, its two halves, then two quarters and two eighths.
    assert len(stage.passes) <= 1 + 2 * 3


@pytest.mark.asyncio
async def test_a_transient_failure_is_never_dead_lettered_but_raised_for_a_retry() -> None:
    stage = _FailsOnPoison(asyncpg.exceptions.SerializationError("could not serialize"))
    with pytest.raises(asyncpg.exceptions.SerializationError):
        await run_batch(stage, _events([b"a", POISON]))
    assert stage.passes == [2]


@pytest.mark.parametrize(
    ("failure", "transient"),
    [
        (asyncpg.exceptions.SerializationError("40001"), True),
        (asyncpg.exceptions.DeadlockDetectedError("40P01"), True),
        (asyncpg.exceptions.AdminShutdownError("57P01"), True),
        (asyncpg.exceptions.CannotConnectNowError("57P03"), True),
        (asyncpg.exceptions.QueryCanceledError("57014: statement_timeout"), True),
        (asyncpg.exceptions.TooManyConnectionsError("53300"), True),
        (asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed"), True),
        (ConnectionRefusedError(111, "refused"), True),
        (TimeoutError(), True),
        (KafkaConnectionError("broker away"), True),
        (asyncpg.exceptions.CharacterNotInRepertoireError("0x00"), False),
        (asyncpg.exceptions.UniqueViolationError("duplicate key"), False),
        (asyncpg.exceptions.NumericValueOutOfRangeError("out of range"), False),
        (UnknownTopicOrPartitionError(), True),  # metadata not yet there
        (MessageSizeTooLargeError(), False),
        (KeyError("a cache entry"), False),
        (ValueError("bad"), False),
    ],
)
def test_what_counts_as_transient(failure: Exception, transient: bool) -> None:
    assert is_transient(failure) is transient


def test_the_backoff_doubles_up_to_its_cap_and_starts_over_after_a_success() -> None:
    backoff = Backoff(initial=1.0, cap=8.0)
    delays = [backoff.next_delay() for _ in range(6)]
    ceilings = [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    backoff.reset()
    assert backoff.next_delay() <= 1.0


class _FlakyStore(BaseStage):
    """A stage whose database is away for its first `outage` calls."""

    stage = "conflicts"
    topics = (FACTS,)

    def __init__(self, outage: int) -> None:
        self.outage = outage
        self.calls = 0
        self.seen_stalled: list[str | None] = []
        self.loop: BatchLoop | None = None

    async def process(self, events: Sequence[RawEvent], out: Outbound) -> None:
        self.calls += 1
        assert self.loop is not None
        self.seen_stalled.append(self.loop.stalled)
        if self.calls <= self.outage:
            raise asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed")
        out.add(OutboundRecord(CONFLICTS, b"done"))


def _loop(stage: BaseStage) -> BatchLoop:
    settings = IngestionSettings(
        database_url=DSN, retry_initial_seconds=0.001, retry_max_seconds=0.01
    )
    return BatchLoop(stage, settings)


@pytest.mark.asyncio
async def test_a_transient_failure_is_retried_with_backoff_while_the_loop_is_not_ready() -> None:
    stage = _FlakyStore(outage=3)
    loop = stage.loop = _loop(stage)
    loop.ready.set()
    retried = metrics.TRANSIENT_FAILURES.labels("conflicts", "process")
    before = retried._value.get()

    out = Outbound("conflicts")
    await loop.retrying("process", lambda: stage.process(_events([b"a"]), out))

    assert stage.calls == 4
    # Not ready from the first failure until the call that succeeded returned.
    assert stage.seen_stalled == [None, *["ConnectionDoesNotExistError"] * 3]
    assert loop.is_ready and loop.stalled is None
    assert retried._value.get() - before == 3
    assert [r.value for r in out.pending] == [b"done"]


@pytest.mark.asyncio
async def test_a_failure_that_is_not_transient_is_not_retried_by_the_loop() -> None:
    stage = _FailsOnPoison()
    loop = _loop(stage)
    with pytest.raises(ValueError, match="refuses"):
        await loop.retrying("process", lambda: stage.process(_events([POISON]), Outbound("x")))
    assert stage.passes == [1]


@pytest.mark.asyncio
async def test_stopping_ends_the_wait_of_a_retry() -> None:
    stage = _FlakyStore(outage=1_000_000)
    loop = stage.loop = _loop(stage)
    loop.backoff = Backoff(initial=3600, cap=3600)
    task = asyncio.create_task(
        loop.retrying("process", lambda: stage.process(_events([b"a"]), Outbound("x")))
    )
    await asyncio.sleep(0.05)
    loop.stop()
    with pytest.raises(asyncpg.exceptions.ConnectionDoesNotExistError):
        await asyncio.wait_for(task, 5)
    assert stage.calls == 2


class _ProducerAwayOnce(FakeProducer):
    def __init__(self) -> None:
        super().__init__()
        self.failed = False

    async def send(self, topic: str, value: bytes, **kwargs: object) -> asyncio.Future[None]:
        if not self.failed:
            self.failed = True
            raise KafkaConnectionError("broker away")
        return await super().send(topic, value, **kwargs)  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_a_failed_produce_keeps_its_records_to_send_again() -> None:
    out = Outbound("conflicts")
    out.add(OutboundRecord(CONFLICTS, b"one"))
    out.add(OutboundRecord(CONFLICTS, b"two"))
    producer = _ProducerAwayOnce()
    loop = _loop(_FailsOnPoison())

    assert await loop.retrying("produce", lambda: out.flush(producer)) == 2

    assert [value for _, value, *_ in producer.sent] == [b"one", b"two"]
    assert out.pending == []


class _SlowStage(BaseStage):
    """A batch that waits for `release` (a PostgreSQL write in flight)."""

    stage = "conflicts"
    topics = (FACTS,)

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started = asyncio.Event()
        self.log: list[str] = []

    async def process(self, events: Sequence[RawEvent], out: Outbound) -> None:
        self.log.append("process started")
        self.started.set()
        await self.release.wait()
        self.log.append("process finished")

    async def on_revoked(self, partitions: set[int]) -> None:
        self.log.append(f"revoked {sorted(partitions)}")


class _OneBatchConsumer:
    """Where aiokafka's types stop: one batch of one record on partition 0, then nothing."""

    def __init__(self) -> None:
        self.batches = [
            {TopicPartition(FACTS, 0): [_consumed(0)]},
        ]
        self.committed: list[dict[TopicPartition, int]] = []

    async def getmany(self, **_: object) -> dict[TopicPartition, list[ConsumerRecord]]:
        return self.batches.pop(0) if self.batches else {}

    async def commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        self.committed.append({tp: o.offset for tp, o in offsets.items()})

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition(FACTS, 0)}

    def highwater(self, tp: TopicPartition) -> int:
        return 1

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.sought = (tp, offset)


def _consumed(offset: int) -> ConsumerRecord:
    return ConsumerRecord(
        topic=FACTS, partition=0, offset=offset, timestamp=0, timestamp_type=0, key=None,
        value=b"x", checksum=None, serialized_key_size=0, serialized_value_size=1, headers=(),
    )  # fmt: skip


@pytest.mark.asyncio
async def test_a_revocation_waits_for_the_batch_in_flight() -> None:
    stage = _SlowStage()
    loop = _loop(stage)
    consumer = _OneBatchConsumer()
    producer = FakeProducer()
    batch = asyncio.create_task(loop.run_once(consumer, producer, timeout_ms=0))  # type: ignore[arg-type]
    await asyncio.wait_for(stage.started.wait(), 5)
    # aiokafka calls the listener from its coordinator task while the batch awaits.
    revoked = {TopicPartition(FACTS, 0)}
    revoke = asyncio.create_task(_Rebalance(loop).on_partitions_revoked(revoked))
    await asyncio.sleep(0.05)
    assert stage.log == ["process started"]  # the revocation waits
    stage.release.set()
    await asyncio.wait_for(asyncio.gather(batch, revoke), 5)
    assert stage.log == ["process started", "process finished", "revoked [0]"]
    assert consumer.committed == [{TopicPartition(FACTS, 0): 1}]  # committed before revoked


class _BrokerAway(_OneBatchConsumer):
    """No records; the broker answers metadata requests only once `back`."""

    def __init__(self) -> None:
        super().__init__()
        self.batches = []
        self.back = False

    async def topics(self) -> set[str]:
        if not self.back:
            raise KafkaConnectionError("Unable to get cluster metadata over all known brokers")
        return {FACTS}

    async def position(self, tp: TopicPartition) -> int:
        return 1


@pytest.mark.asyncio
async def test_an_idle_loop_whose_broker_does_not_answer_is_not_ready() -> None:
    loop = _loop(_FailsOnPoison())
    loop.ready.set()
    consumer = _BrokerAway()
    await loop.run_once(consumer, FakeProducer(), timeout_ms=0)  # type: ignore[arg-type]
    assert (loop.is_ready, loop.not_ready_because) == (False, "KafkaConnectionError")
    consumer.back = True
    loop._probed = None  # the next probe is due
    await loop.run_once(consumer, FakeProducer(), timeout_ms=0)  # type: ignore[arg-type]
    assert (loop.is_ready, loop.not_ready_because) == (True, None)


@pytest.mark.asyncio
async def test_a_batch_committed_says_the_broker_answers_again() -> None:
    stage = _FailsOnPoison()
    loop = _loop(stage)
    loop.ready.set()
    loop.broker_unreachable = "KafkaConnectionError"
    await loop.run_once(_OneBatchConsumer(), FakeProducer(), timeout_ms=0)  # type: ignore[arg-type]
    assert loop.is_ready


@pytest.mark.asyncio
async def test_a_step_riding_out_an_outage_reports_the_loop_not_ready_until_it_ends() -> None:
    settings = IngestionSettings(database_url=DSN, stall_after_seconds=0.05)
    loop = BatchLoop(_FailsOnPoison(), settings)
    loop.ready.set()
    release = asyncio.Event()
    step = asyncio.create_task(loop.retrying("produce", release.wait))
    await asyncio.sleep(0.02)
    assert loop.is_ready  # a short wait is no stall
    await asyncio.sleep(0.1)
    assert (loop.is_ready, loop.not_ready_because) == (False, "produce waiting")
    release.set()
    assert await asyncio.wait_for(step, 5) is True
    assert loop.is_ready


def _phase_counts(stage: str) -> dict[str, float]:
    return {
        phase: REGISTRY.get_sample_value(
            "concord_batch_phase_seconds_count", {"stage": stage, "phase": phase}
        )
        or 0.0
        for phase in ("process", "produce", "after_produce", "commit")
    }


@pytest.mark.asyncio
async def test_each_phase_of_a_committed_batch_is_timed_once() -> None:
    """concord_batch_phase_seconds says where a slow batch's time went: one observation of
    each phase per batch, and none for a loop turn that consumed nothing."""
    loop = _loop(_FailsOnPoison())
    loop.ready.set()
    idle = _BrokerAway()
    idle.back = True
    before = _phase_counts("conflicts")
    await loop.run_once(_OneBatchConsumer(), FakeProducer(), timeout_ms=0)  # type: ignore[arg-type]
    await loop.run_once(idle, FakeProducer(), timeout_ms=0)  # type: ignore[arg-type]
    after = _phase_counts("conflicts")
    assert {phase: after[phase] - before[phase] for phase in after} == dict.fromkeys(after, 1.0)


class _CommitRidingOutAnOutage(_OneBatchConsumer):
    """A commit that waits for its group coordinator, as aiokafka's does while the broker is
    away (found by tests/faults/test_broker_outage.py: a cut during a commit kept the worker
    ready for the whole outage)."""

    def __init__(self) -> None:
        super().__init__()
        self.coordinator_back = asyncio.Event()

    async def commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        await self.coordinator_back.wait()
        await super().commit(offsets)


@pytest.mark.asyncio
async def test_a_commit_waiting_out_an_outage_reports_the_loop_not_ready_until_it_ends() -> None:
    settings = IngestionSettings(database_url=DSN, stall_after_seconds=0.05)
    loop = BatchLoop(_FailsOnPoison(), settings)
    loop.ready.set()
    consumer = _CommitRidingOutAnOutage()
    batch = asyncio.create_task(loop.run_once(consumer, FakeProducer(), timeout_ms=0))  # type: ignore[arg-type]
    await asyncio.sleep(0.2)
    assert (loop.is_ready, loop.not_ready_because) == (False, "commit waiting")
    consumer.coordinator_back.set()
    assert await asyncio.wait_for(batch, 5) == 1
    assert consumer.committed == [{TopicPartition(FACTS, 0): 1}]
    assert loop.is_ready
