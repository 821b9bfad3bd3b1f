"""The Kafka side the benchmarks share: a bulk producer, a fresh broker and database for one
part of pipeline.py, and a reader that follows a topic from its start in the background."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import ConsumerRecord, TopicPartition

from concord.runtime.reading import assign_from_start
from concord.stack.broker import ensure_topics, start_broker
from concord.topics import PARTITIONS, TopicSpec

from .runner import Teardown, database, progress

BENCH_IN, BENCH_OUT = "bench.in", "bench.out"


def bulk_producer(bootstrap: str) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=5, max_batch_size=64 * 1024, acks="all"
    )


@contextlib.asynccontextmanager
async def bulk_producing(bootstrap: str) -> AsyncIterator[AIOKafkaProducer]:
    """A started bulk_producer, stopped on leaving."""
    producer = bulk_producer(bootstrap)
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop()


@contextlib.asynccontextmanager
async def fresh_backend(teardown: Teardown, part: str) -> AsyncIterator[tuple[str, str]]:
    """A fresh broker (every Concord topic, plus bench.in and bench.out) and a migrated
    database for one part: (bootstrap servers, DSN). Stopped when the part ends."""
    state_dir = teardown.tempdir(part)
    progress(f"{part}: starting a fresh broker and PostgreSQL")
    broker = await start_broker(state_dir)
    teardown.processes.append(broker.record)
    try:
        await ensure_topics(
            broker.bootstrap_servers,
            [TopicSpec(BENCH_IN, PARTITIONS, "benchmark input"), TopicSpec(BENCH_OUT, 4, "output")],
        )
        yield broker.bootstrap_servers, await database(state_dir, teardown)
    finally:
        progress(f"{part}: stopping the broker and PostgreSQL")
        for record in list(teardown.processes):
            teardown.stop_process(record)


class TopicReader:
    """Reads `topic` from its beginning (all partitions assigned, no group) in a background
    task from start() to stop(); a subclass's take() sees each batch as it arrives."""

    def __init__(self, bootstrap: str, topic: str, *, max_records: int | None = None) -> None:
        self.bootstrap, self.topic, self.max_records = bootstrap, topic, max_records
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, enable_auto_commit=False, fetch_max_wait_ms=10
        )
        await self.consumer.start()
        await assign_from_start(self.consumer, self.topic)
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            self.take(await self.consumer.getmany(timeout_ms=100, max_records=self.max_records))

    def take(self, batch: dict[TopicPartition, list[ConsumerRecord[Any, Any]]]) -> None:
        raise NotImplementedError

    def check(self) -> None:
        """Raise what ended the background task, if it has ended."""
        if self._task is not None and self._task.done():
            self._task.result()

    async def stop(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self.consumer.stop()
