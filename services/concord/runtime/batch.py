"""The batch loop every stage runs: consume a batch, process it, produce, await acks, commit.

A per-event Faust agent passes about 2.2k msg/s on this class of machine, a fifth of a plain
aiokafka loop (docs/architecture.md), because Faust spends a task and a thread hand-over per
message. So records move in batches on the worker's own aiokafka clients, while Faust keeps
what it is good at: the app's lifecycle, web views, signals, timers.

Delivery is at least once (the local broker cannot do transactions): offsets are committed
only after every record produced for the batch is acknowledged, and every sink is idempotent.

Faults (runtime/faults.py): a transient failure is retried with backoff, the same batch again,
while the loop reports not ready; any other failure is the record's. The batch is split until
the record that fails is alone, and that record goes to the dead-letter topic, so one record
never stops a partition. An output record larger than the producer's limit is such a failure:
Outbound.add refuses it (OutputTooLarge) inside the stage's pass, before anything is sent, so
its input record is dead-lettered (OUTPUT_TOO_LARGE) instead of the produce failing for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import CommitFailedError
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata, TopicPartition

from concord import metrics
from concord.config import WorkerSettings
from concord.deadletters import Rejection, dead_letter, without_payload
from concord.events import codec
from concord.events.raw import RawEvent
from concord.failures import failure_site
from concord.runtime.faults import Backoff, PartitionLost, is_transient
from concord.runtime.partitioning import key_partitioner
from concord.runtime.records import partition_numbers, raw_event
from concord.topics import DEADLETTER

log = logging.getLogger(__name__)

Headers = Sequence[tuple[str, bytes]]
T = TypeVar("T")
IDLE_LAG_REFRESH_SECONDS = 5.0
# While idle, the loop asks the broker for metadata this often, waiting at most the timeout.
BROKER_PROBE_SECONDS = 5.0
BROKER_PROBE_TIMEOUT_SECONDS = 5.0
# The largest record a worker produces, in one place: the producer's max_request_size
# (make_producer_for), aiokafka's default, just under Kafka's default message.max.bytes
# (1,048,588). Outbound.add checks each record against it with the producer's own estimate, so
# the producer never refuses one of the loop's records.
MAX_RECORD_BYTES = 1024 * 1024


def record_bytes(key: bytes | None, value: bytes | None, headers: Headers = ()) -> int:
    """A record's size as the producer reckons it against max_request_size."""
    return int(DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, list(headers)))


class OutputTooLarge(Exception):
    """A record a stage wants produced is over MAX_RECORD_BYTES: the producer would refuse it,
    not transiently. Raised by Outbound.add, inside the stage's pass, so that the stage keeps
    nothing of the pass, as after any failure, and the loop isolates the input record and
    dead-letters it. Names the topic and sizes only."""

    def __init__(self, topic: str, size: int) -> None:
        self.topic = topic
        self.size = size
        super().__init__(
            f"a record for {topic} of {size} bytes is over the producer's limit of "
            f"{MAX_RECORD_BYTES} bytes"
        )


class Producer(Protocol):
    """What the loop and the outbox need of a Kafka producer (aiokafka's AIOKafkaProducer is
    one), so that a stage holds no aiokafka type and a test can hand it a fake."""

    async def send(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> Awaitable[object]:
        """Queue the record; what it returns completes once the broker acknowledged it."""


@dataclass(frozen=True)
class OutboundRecord:
    topic: str
    value: bytes
    key: bytes | None = None
    headers: Headers = ()


@dataclass
class Outbound:
    """Records a batch wants produced; the loop sends them all and awaits every ack."""

    stage: str
    pending: list[OutboundRecord] = field(default_factory=list)
    # Called once every pending record was acknowledged: what holds state for records handed
    # over (the outbox's rows) learns they went out. A failed pass's Outbound is dropped
    # unsent, and its callbacks with it.
    when_sent: list[Callable[[], None]] = field(default_factory=list)

    def add(self, record: OutboundRecord) -> None:
        """Queue the record; one the producer would refuse as too large raises OutputTooLarge."""
        # The producer's estimate costs a pass over the record; a record well under the limit
        # (framing and headers take at most a few hundred bytes) needs none.
        rough = len(record.value) + len(record.key or b"") + 64 * (len(record.headers) + 1)
        if rough + sum(len(k) + len(v) for k, v in record.headers) > MAX_RECORD_BYTES // 2:
            size = record_bytes(record.key, record.value, record.headers)
            if size > MAX_RECORD_BYTES:
                raise OutputTooLarge(record.topic, size)
        self.pending.append(record)

    async def flush(self, producer: Producer) -> int:
        """Send every pending record and await every ack. On failure the records stay
        pending, to be sent again (consumers dedupe, so a repeat costs nothing)."""
        records = self.pending
        futures = [
            await producer.send(r.topic, r.value, key=r.key, headers=list(r.headers))
            for r in records
        ]
        await asyncio.gather(*futures)
        self.pending = []
        callbacks, self.when_sent = self.when_sent, []
        for callback in callbacks:
            callback()
        # Counted per topic, not per record: a label lookup costs more than the increment.
        for topic, count in Counter(r.topic for r in records).items():
            metrics.EVENTS_PRODUCED.labels(self.stage, topic).inc(count)
        return len(records)

    def extend(self, other: Outbound) -> None:
        self.pending.extend(other.pending)
        self.when_sent.extend(other.when_sent)


def publish_dead_letter(out: Outbound, *, raw: RawEvent, rejection: Rejection) -> None:
    """The dead-letter port: the original bytes, the reason code, and where it failed. A letter
    the producer would refuse as too large keeps the coordinates, and the original's length and
    SHA-256 instead of its bytes (and, if its key or headers alone are too large, leaves those
    out too): a dead letter is always sent."""
    letter = dead_letter(raw, rejection, stage=out.stage, at=datetime.now(UTC))
    value = codec.DEAD_LETTER.encode(letter)
    for everything in (False, True):
        if record_bytes(letter.original_key, value) <= MAX_RECORD_BYTES:
            break
        letter = without_payload(letter, limit=MAX_RECORD_BYTES, everything=everything)
        value = codec.DEAD_LETTER.encode(letter)
    out.add(OutboundRecord(DEADLETTER, value, key=letter.original_key))
    metrics.EVENTS_DEADLETTERED.labels(out.stage, rejection.reason_code).inc()
    # Topic coordinates identify the record for an operator; the reason carries no PHI.
    log.info(
        "dead-lettered %s[%d]@%d: %s",
        raw.topic,
        raw.partition,
        raw.offset,
        rejection.reason_code,
    )


# How often the loop gives its handler time-driven work: staleness is raised within a minute of
# becoming true with room to spare.
TICK_SECONDS = 5.0


class StageHandler(Protocol):
    """What a service plugs into the loop. Implementations live in each service's app.py.

    A stage sees RawEvents and partition numbers, never an aiokafka type: the loop converts
    each consumed record once. The numbers are those of every topic the stage consumes: topics
    keyed alike are assigned by number, so a stage's state is per number, not per topic."""

    stage: str
    topics: tuple[str, ...]

    async def process(self, events: Sequence[RawEvent], out: Outbound) -> None:
        """Turn consumed events into outbound records (and state changes)."""

    async def on_produced(self) -> None:
        """Called after every outbound record of the batch was acknowledged, before commit."""

    async def on_assigned(self, partitions: set[int]) -> None:
        """This worker now owns these partitions: load or prepare their state."""

    async def on_revoked(self, partitions: set[int]) -> None:
        """This worker no longer owns these partitions: drop their cached state."""

    async def on_tick(self, partitions: set[int], out: Outbound) -> None:
        """Every few seconds, between batches: time-driven work on the owned partitions (the
        conflicts stage's staleness timers). What it adds to `out` is sent, then
        on_produced is called, as after a batch."""


async def process_isolating(stage: StageHandler, events: Sequence[RawEvent]) -> Outbound:
    """What the stage produces for the events; a record on which it fails for a reason that is
    not transient goes to the dead-letter topic instead, found by halving the batch (log2 n
    extra passes over a batch with one such record). A transient failure is raised, for the
    caller to retry the whole batch. A failed pass's output is dropped, never sent: a stage
    that raises keeps nothing from the pass in memory (it rolls back or forgets its cache)."""
    out = Outbound(stage.stage)
    try:
        await stage.process(events, out)
        return out
    except Exception as exc:
        if is_transient(exc) or isinstance(exc, PartitionLost):
            raise
        if len(events) > 1:
            half = len(events) // 2
            out = await process_isolating(stage, events[:half])
            out.extend(await process_isolating(stage, events[half:]))
            return out
        raw = events[0]
        out = Outbound(stage.stage)
        if isinstance(exc, OutputTooLarge):
            log.error(
                "%s: its output for %s[%d]@%d is too large to produce (%d bytes for %s, "
                "limit %d); dead-lettered",
                stage.stage, raw.topic, raw.partition, raw.offset, exc.size, exc.topic,
                MAX_RECORD_BYTES,
            )  # fmt: skip
            rejection = Rejection(
                "OUTPUT_TOO_LARGE",
                f"the record the {stage.stage} stage made of it for {exc.topic} is "
                f"{exc.size} bytes, over the producer's limit of {MAX_RECORD_BYTES} bytes",
            )
            publish_dead_letter(out, raw=raw, rejection=rejection)
            return out
        log.error(
            "%s failed on %s[%d]@%d: %s; dead-lettered",
            stage.stage, raw.topic, raw.partition, raw.offset, failure_site(exc),
        )  # fmt: skip
        rejection = Rejection(
            f"{stage.stage.upper()}_FAILED",
            f"{type(exc).__name__} while the {stage.stage} stage processed the record",
        )
        publish_dead_letter(out, raw=raw, rejection=rejection)
        return out


async def run_batch(
    stage: StageHandler, events: Iterable[RawEvent], *, acknowledged: bool = True
) -> Outbound:
    """One batch through a stage as BatchLoop.run_once drives it, without a broker: what the
    stage would produce. `acknowledged=False` is a batch whose records the broker never
    acknowledged (on_produced is not called; the loop would not commit either)."""
    batch = list(events)
    foreign = sorted({e.topic for e in batch} - set(stage.topics))
    if foreign:
        # The loop only ever hands a stage records of the topics it subscribes to.
        raise ValueError(f"{stage.stage} does not consume {', '.join(foreign)}")
    out = await process_isolating(stage, batch)
    if acknowledged:
        await stage.on_produced()
    return out


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """aiokafka calls these from its coordinator task, which runs beside the batch loop: each
    waits for the batch in flight (the loop's lock), so a stage never has its cache dropped
    or loaded under a running batch, and the batch's offsets are committed before its
    partitions go."""

    def __init__(self, loop: BatchLoop) -> None:
        self._loop = loop

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        async with self._loop.batch_lock:
            await self._loop.handler.on_revoked(partition_numbers(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        async with self._loop.batch_lock:
            await self._loop.handler.on_assigned(partition_numbers(assigned))
        self._loop.assigned = set(assigned)
        self._loop.ready.set()
        metrics.STAGE_READY.labels(self._loop.handler.stage).set(int(self._loop.is_ready))


class BatchLoop:
    """Runs one StageHandler on a consumer group until stopped."""

    def __init__(
        self,
        handler: StageHandler,
        settings: WorkerSettings,
        *,
        group_id: str | None = None,
        producer: AIOKafkaProducer | None = None,
        tick_seconds: float = TICK_SECONDS,
    ) -> None:
        self.handler = handler
        self.settings = settings
        self.group_id = group_id or f"concord-{handler.stage}"
        self.ready = asyncio.Event()
        self.assigned: set[TopicPartition] = set()
        self.producer = producer
        self.tick_seconds = tick_seconds
        self._stopping = asyncio.Event()
        # Held from a batch's consumption to its commit, and by ticks: rebalance callbacks
        # wait for it.
        self.batch_lock = asyncio.Lock()
        # None is never: time.monotonic() counts from boot, so 0.0 would read as recent.
        self._lag_refreshed: float | None = None
        self._next_tick = 0.0
        self.backoff = Backoff(settings.retry_initial_seconds, settings.retry_max_seconds)
        # Why the loop cannot make progress now (the kind of the transient failure it is
        # retrying), or None: /health reports not ready while it is set.
        self.stalled: str | None = None
        # Why the broker looked unreachable at the last idle probe, or None. aiokafka retries
        # fetches and reconnects inside its clients, so an outage reaches an idle loop only
        # as empty fetches: the probe is what makes it show in readiness.
        self.broker_unreachable: str | None = None
        self._probed: float | None = None
        # When the loop last went round (monotonic): /health/live fails when it stops turning.
        self.last_turn = time.monotonic()

    @property
    def is_ready(self) -> bool:
        """Partitions assigned, the broker reachable, no transient failure being retried."""
        return self.ready.is_set() and self.stalled is None and self.broker_unreachable is None

    @property
    def not_ready_because(self) -> str | None:
        return self.stalled or self.broker_unreachable

    async def retrying(self, what: str, work: Callable[[], Awaitable[T]]) -> T:
        """`work` until it succeeds: a transient failure is retried after a backoff, the loop
        reporting not ready meanwhile; any other failure is raised. Stopping ends the wait."""
        while True:
            self.last_turn = time.monotonic()
            try:
                result = await self._watched(what, work)
            except Exception as exc:
                if not is_transient(exc) or self._stopping.is_set():
                    raise
                delay = self.backoff.next_delay()
                if self.stalled is None:
                    log.warning(
                        "%s: %s failed (%s); retrying with backoff, not ready meanwhile",
                        self.handler.stage, what, failure_site(exc),
                    )  # fmt: skip
                self.stalled = type(exc).__name__
                metrics.STAGE_READY.labels(self.handler.stage).set(0)
                metrics.TRANSIENT_FAILURES.labels(self.handler.stage, what).inc()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
                continue
            if self.stalled is not None:
                log.info("%s: %s succeeded again; ready", self.handler.stage, what)
                metrics.STAGE_READY.labels(self.handler.stage).set(1)
            self.stalled = None
            self.backoff.reset()
            return result

    def make_producer(self) -> AIOKafkaProducer:
        return self.make_producer_for(self.settings)

    @staticmethod
    def make_producer_for(settings: WorkerSettings) -> AIOKafkaProducer:
        # Idempotence is off: the local broker's InitProducerId fails. Sinks dedupe instead.
        # No linger: a batch is queued whole and then awaited, so lingering only adds latency.
        # max_request_size is the limit Outbound.add checks every record against.
        return AIOKafkaProducer(
            **settings.kafka_options(),
            acks="all",
            linger_ms=0,
            max_batch_size=64 * 1024,
            max_request_size=MAX_RECORD_BYTES,
            enable_idempotence=False,
            partitioner=key_partitioner,
        )

    def make_consumer(self) -> AIOKafkaConsumer:
        s = self.settings
        return AIOKafkaConsumer(
            **s.kafka_options(),
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=s.fetch_max_wait_ms,
            session_timeout_ms=s.session_timeout_ms,
            heartbeat_interval_ms=s.heartbeat_interval_ms,
            max_poll_interval_ms=300_000,
            # Topics keyed alike (concord.facts and concord.resolutions) are assigned by
            # partition number, so one worker owns all of a patient's records.
            partition_assignment_strategy=(RangePartitionAssignor,),
        )

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        own_producer = self.producer is None
        producer = self.producer or self.make_producer()
        consumer = self.make_consumer()
        if own_producer:
            await producer.start()
        try:
            consumer.subscribe(list(self.handler.topics), listener=_Rebalance(self))
            await consumer.start()
            try:
                while not self._stopping.is_set():
                    await self.run_once(consumer, producer, timeout_ms=200)
            finally:
                await consumer.stop()
        finally:
            if own_producer:
                await producer.stop()

    async def run_once(
        self, consumer: AIOKafkaConsumer, producer: Producer, *, timeout_ms: int
    ) -> int:
        """One batch, end to end. Returns the number of records consumed."""
        self.last_turn = time.monotonic()
        batch = await consumer.getmany(
            timeout_ms=timeout_ms, max_records=self.settings.max_batch_records
        )
        records = [record for tp_records in batch.values() for record in tp_records]
        if not records:
            await self._probe_broker(consumer)
            await self._refresh_idle_lag(consumer)
            await self.tick(consumer, producer)
            return 0
        async with self.batch_lock:
            try:
                await self._process_batch(consumer, producer, batch, records)
            except PartitionLost as lost:
                # Another worker owns these partitions now: nothing of the batch was kept
                # or sent; if they come back to this worker, it reads the batch again.
                log.warning("%s: %s; the batch is dropped", self.handler.stage, lost)
                for tp, tp_records in batch.items():
                    if tp in consumer.assignment():
                        consumer.seek(tp, tp_records[0].offset)
                return len(records)
        await self.tick(consumer, producer)
        return len(records)

    async def _watched(self, what: str, work: Callable[[], Awaitable[T]]) -> T:
        """`work`, reported as stalled while it runs past stall_after_seconds: aiokafka and
        asyncpg wait out an outage inside their clients (a produce until its request timeout),
        and a supervisor must see that the stage makes no progress meanwhile."""
        task = asyncio.ensure_future(work())
        try:
            done, _ = await asyncio.wait({task}, timeout=self.settings.stall_after_seconds)
        except asyncio.CancelledError:
            task.cancel()  # asyncio.wait leaves it running
            raise
        if not done and self.stalled is None:
            log.warning("%s: %s has taken over %.0f s; not ready meanwhile",
                        self.handler.stage, what, self.settings.stall_after_seconds)  # fmt: skip
            self.stalled = f"{what} waiting"
            metrics.STAGE_READY.labels(self.handler.stage).set(0)
        try:
            return await task
        finally:
            if self.stalled == f"{what} waiting":
                self.stalled = None
                metrics.STAGE_READY.labels(self.handler.stage).set(int(self.is_ready))

    async def _process_batch(
        self,
        consumer: AIOKafkaConsumer,
        producer: Producer,
        batch: dict[TopicPartition, list[ConsumerRecord]],
        records: list[ConsumerRecord],
    ) -> None:
        """Process, produce, await the acks, commit: a transient failure at any step is
        retried; a record that fails otherwise is dead-lettered (process_isolating)."""
        stage = self.handler.stage
        started = time.perf_counter()
        for tp, tp_records in batch.items():
            metrics.EVENTS_CONSUMED.labels(stage, tp.topic).inc(len(tp_records))
        received = datetime.now(UTC)
        events = [raw_event(r, received) for r in records]
        phases = _Phases(stage, started)
        out = await self.retrying("process", lambda: process_isolating(self.handler, events))
        phases.done("process")
        await self.retrying("produce", lambda: out.flush(producer))
        phases.done("produce")
        await self.retrying("after produce", self.handler.on_produced)
        phases.done("after_produce")
        offsets = {tp: OffsetAndMetadata(recs[-1].offset + 1, "") for tp, recs in batch.items()}
        try:
            # Watched: aiokafka's commit waits for a group coordinator while the broker is
            # away, and the loop must say meanwhile that it makes no progress.
            await self._watched("commit", lambda: consumer.commit(offsets))
        except CommitFailedError:
            # A rebalance took the partitions mid-batch; their new owner re-reads the batch,
            # and every sink downstream is idempotent.
            log.warning("commit failed after a rebalance; the batch will be redelivered")
        phases.done("commit")
        if self.broker_unreachable is not None:
            # The commit reached the group coordinator: the broker answers again.
            log.info("%s: the broker answers again; ready", stage)
            self.broker_unreachable = None
            metrics.STAGE_READY.labels(stage).set(int(self.is_ready))
        elapsed = time.perf_counter() - started
        metrics.BATCH_SECONDS.labels(stage).observe(elapsed)
        metrics.BATCH_SIZE.labels(stage).observe(len(records))
        metrics.EVENT_SECONDS.labels(stage).observe(elapsed / len(records))
        self._record_lag(consumer, batch)

    async def tick(self, consumer: AIOKafkaConsumer, producer: Producer) -> None:
        """The handler's time-driven work, at most every tick_seconds, in the loop itself:
        between batches, so it never races a batch over the same cached state."""
        now = time.monotonic()
        if now < self._next_tick:
            return
        self._next_tick = now + self.tick_seconds
        out = Outbound(self.handler.stage)
        async with self.batch_lock:
            owned = partition_numbers(consumer.assignment())
            try:
                await self.retrying("tick", lambda: self.handler.on_tick(owned, out))
            except PartitionLost as lost:
                log.warning("%s: %s; the tick is dropped", self.handler.stage, lost)
                return
            if out.pending:
                await self.retrying("produce", lambda: out.flush(producer))
                await self.retrying("after produce", self.handler.on_produced)

    async def _probe_broker(self, consumer: AIOKafkaConsumer) -> None:
        """While idle, every BROKER_PROBE_SECONDS: a metadata request, so that a broker
        outage shows as not ready (and counts as a transient failure of step `broker`)."""
        now = time.monotonic()
        if self._probed is not None and now - self._probed < BROKER_PROBE_SECONDS:
            return
        self._probed = now
        stage = self.handler.stage
        try:
            await asyncio.wait_for(consumer.topics(), BROKER_PROBE_TIMEOUT_SECONDS)
        except Exception as exc:
            if self.broker_unreachable is None:
                log.warning("%s: the broker does not answer (%s); not ready", stage,
                            type(exc).__name__)  # fmt: skip
            self.broker_unreachable = type(exc).__name__
            metrics.TRANSIENT_FAILURES.labels(stage, "broker").inc()
            metrics.STAGE_READY.labels(stage).set(0)
            return
        if self.broker_unreachable is not None:
            log.info("%s: the broker answers again; ready", stage)
        self.broker_unreachable = None
        metrics.STAGE_READY.labels(stage).set(int(self.is_ready))

    async def _refresh_idle_lag(self, consumer: AIOKafkaConsumer) -> None:
        """Keep the lag gauge true while idle, so a stalled stage shows as lag, not silence."""
        now = time.monotonic()
        if self._lag_refreshed is not None and now - self._lag_refreshed < IDLE_LAG_REFRESH_SECONDS:
            return
        self._lag_refreshed = now
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            if highwater is None:
                continue
            position = await consumer.position(tp)
            metrics.CONSUMER_LAG.labels(self.handler.stage, tp.topic, str(tp.partition)).set(
                max(0, highwater - position)
            )

    def _record_lag(
        self, consumer: AIOKafkaConsumer, batch: dict[TopicPartition, list[ConsumerRecord]]
    ) -> None:
        for tp, tp_records in batch.items():
            highwater = consumer.highwater(tp)
            if highwater is not None:
                lag = max(0, highwater - tp_records[-1].offset - 1)
                metrics.CONSUMER_LAG.labels(self.handler.stage, tp.topic, str(tp.partition)).set(
                    lag
                )


class _Phases:
    """Each phase of a batch into concord_batch_phase_seconds: where a slow batch's time went
    (its own CPU, the broker's acks or the database)."""

    def __init__(self, stage: str, started: float) -> None:
        self.stage = stage
        self.last = started

    def done(self, phase: str) -> None:
        now = time.perf_counter()
        metrics.BATCH_PHASE_SECONDS.labels(self.stage, phase).observe(now - self.last)
        self.last = now
