"""Kafka records become RawEvents here, so no aiokafka type reaches a service's core."""

from __future__ import annotations

from datetime import UTC, datetime

from aiokafka.structs import ConsumerRecord

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
