"""Reading a topic from its start, as the CLI, the tests and the benchmark need it, and
following the alerts as they are published, as `concord alerts follow` and the demo do."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord, TopicPartition

from concord.events import codec
from concord.events.models import Alert
from concord.topics import ALERTS, PARTITIONS


async def assign_from_start(consumer: AIOKafkaConsumer, topic: str) -> None:
    """Own every partition of the topic (no group) and start at its beginning."""
    known = consumer.partitions_for_topic(topic)
    partitions = [TopicPartition(topic, p) for p in sorted(known or range(PARTITIONS))]
    consumer.assign(partitions)
    await consumer.seek_to_beginning(*partitions)


def client_options(kafka: str | dict[str, Any]) -> dict[str, Any]:
    """aiokafka keyword arguments from bootstrap servers or KafkaSettings.kafka_options()."""
    return {"bootstrap_servers": kafka} if isinstance(kafka, str) else dict(kafka)


async def read_topic(
    kafka: str | dict[str, Any],
    topic: str,
    *,
    idle_seconds: float = 1.5,
    fetch_max_wait_ms: int = 50,
    keep: Callable[[ConsumerRecord], bool] | None = None,
) -> list[ConsumerRecord]:
    """Every record of a topic (those `keep` accepts, if given: the others are not held in
    memory), read until nothing new arrives for `idle_seconds`.

    `kafka` is bootstrap servers, or KafkaSettings.kafka_options() where TLS or SASL is needed.
    (Not up to the end offsets: the local broker's ListOffsets(latest) is off by a batch.)"""
    consumer = AIOKafkaConsumer(
        **client_options(kafka), enable_auto_commit=False, fetch_max_wait_ms=fetch_max_wait_ms
    )
    try:
        await consumer.start()
        await assign_from_start(consumer, topic)
        records: list[ConsumerRecord] = []
        last_new = time.monotonic()
        while time.monotonic() - last_new < idle_seconds:
            batch = await consumer.getmany(timeout_ms=100, max_records=10_000)
            for recs in batch.values():
                records.extend(recs if keep is None else filter(keep, recs))
                last_new = time.monotonic()
        return records
    finally:
        await consumer.stop()


async def follow_alerts(
    kafka: str | dict[str, Any],
    on_alert: Callable[[Alert], None],
    *,
    from_beginning: bool = False,
    stop: asyncio.Event | None = None,
) -> None:
    """Call on_alert for every alert published (since now, or since the topic's start)."""
    started_ms = int(time.time() * 1000)
    options = client_options(kafka)
    consumer = AIOKafkaConsumer(**options, enable_auto_commit=False, fetch_max_wait_ms=50)
    try:
        await consumer.start()  # stopped in finally also when it fails: it leaves a client open
        await assign_from_start(consumer, ALERTS)
        stop = stop or asyncio.Event()
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                for record in records:
                    # Reading from the start and skipping by timestamp: the local broker's
                    # end offsets are unreliable, so seek_to_end could skip or repeat.
                    if from_beginning or record.timestamp >= started_ms:
                        on_alert(codec.ALERT.decode(record.value))
    finally:
        await consumer.stop()
