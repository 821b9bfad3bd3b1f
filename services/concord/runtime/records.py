"""Kafka records become RawEvents here, and topic partitions their numbers, so no aiokafka
type reaches a service's stage or core."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from aiokafka.structs import ConsumerRecord, TopicPartition

from concord.events.raw import RawEvent


def raw_event(record: ConsumerRecord, received_time: datetime | None = None) -> RawEvent:
    return RawEvent(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=record.key,
        value=record.value,
        headers=tuple((key, value) for key, value in (record.headers or ())),
        received_time=received_time or datetime.now(UTC),
    )


def partition_numbers(partitions: Iterable[TopicPartition]) -> set[int]:
    return {tp.partition for tp in partitions}
