"""Reading a topic from its start, as the CLI, the tests and the benchmark need it."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord, TopicPartition

from concord.topics import PARTITIONS


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
