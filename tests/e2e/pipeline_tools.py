"""Helpers the end-to-end tests share: publish raw events, read topics, poll PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
import orjson
from aiokafka import AIOKafkaProducer

from concord.config import DEFAULT_ENTERPRISE_ID_SYSTEM
from concord.runtime.reading import read_topic
from concord.topics import RAW_FHIR

__all__ = ["eventually", "fetch", "patient", "publish", "read_topic"]

T = TypeVar("T")


def patient(
    enterprise_id: str | None,
    resource_id: str,
    *,
    birth_date: str = "1970-01-01",
    gender: str = "female",
    family: str = "Testperson",
    given: str = "Alex",
    version: str = "1",
    last_updated: str = "2026-01-01T00:00:00+00:00",
) -> bytes:
    identifiers = [{"system": "urn:test:mrn", "value": resource_id}]
    if enterprise_id is not None:
        identifiers.append({"system": DEFAULT_ENTERPRISE_ID_SYSTEM, "value": enterprise_id})
    return orjson.dumps(
        {
            "resourceType": "Patient",
            "id": resource_id,
            "meta": {"versionId": version, "lastUpdated": last_updated},
            "identifier": identifiers,
            "name": [{"use": "official", "family": family, "given": [given]}],
            "gender": gender,
            "birthDate": birth_date,
        }
    )


async def publish(
    bootstrap: str, events: list[tuple[str | None, bytes]], topic: str = RAW_FHIR
) -> list[tuple[int, int]]:
    """Publish (source, value) pairs; returns each event's (partition, offset)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        futures = [
            await producer.send(
                topic, value, headers=[("source", source.encode())] if source is not None else []
            )
            for source, value in events
        ]
        return [(m.partition, m.offset) for m in await asyncio.gather(*futures)]
    finally:
        await producer.stop()


async def eventually(
    probe: Callable[[], Awaitable[T]], done: Callable[[T], bool], *, within: float
) -> T:
    """Poll until `done(probe())`, or return the last value after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        value = await probe()
        if done(value) or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.25)


async def fetch(dsn: str, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()
