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
from concord.ingestion.subjects import patient_of
from concord.runtime.reading import read_topic
from concord.topics import RAW_FHIR

__all__ = ["eventually", "fetch", "patient", "patient_resource", "publish", "read_topic"]

T = TypeVar("T")


def patient_resource(
    enterprise_id: str | None,
    resource_id: str,
    *,
    birth_date: str = "1970-01-01",
    gender: str = "female",
    family: str = "Testperson",
    given: str = "Alex",
    version: str = "1",
    last_updated: str = "2026-01-01T00:00:00+00:00",
) -> dict[str, Any]:
    """A FHIR Patient with a local MRN (its resource id) and, when given, an enterprise id."""
    identifiers = [{"system": "urn:test:mrn", "value": resource_id}]
    if enterprise_id is not None:
        identifiers.append({"system": DEFAULT_ENTERPRISE_ID_SYSTEM, "value": enterprise_id})
    return {
        "resourceType": "Patient",
        "id": resource_id,
        "meta": {"versionId": version, "lastUpdated": last_updated},
        "identifier": identifiers,
        "name": [{"use": "official", "family": family, "given": [given]}],
        "gender": gender,
        "birthDate": birth_date,
    }


def patient(enterprise_id: str | None, resource_id: str, **fields: str) -> bytes:
    """patient_resource() as the bytes a source publishes (`fields`: its keyword arguments)."""
    return orjson.dumps(patient_resource(enterprise_id, resource_id, **fields))


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


async def publish_keyed(bootstrap: str, events: list[tuple[str, dict[str, Any]]]) -> None:
    """As `concord publish` does: FHIR resources keyed by source and patient, so that a
    patient's records of one source stay in order (its Patient first)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all")
    await producer.start()
    try:
        futures = []
        for source, resource in events:
            key = f"{source}/{patient_of(resource)}".encode()
            headers = [("source", source.encode())]
            value = orjson.dumps(resource)
            futures.append(await producer.send(RAW_FHIR, value, key=key, headers=headers))
        await asyncio.gather(*futures)
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


# --- FHIR clinical records two sources send (the recovery and fault tests' workload) ----------

TERMINOLOGY = "http://terminology.hl7.org/CodeSystem"
LOINC, UCUM = "http://loinc.org", "http://unitsofmeasure.org"
SNOMED_CT, RXNORM = "http://snomed.info/sct", "http://www.nlm.nih.gov/research/umls/rxnorm"
TAKEN = "2026-11-20T08:00:00+00:00"  # one specimen time for both sources' results
FIRST, LATER = "2026-11-20T09:00:00+00:00", "2026-11-25T09:00:00+00:00"


def observation(
    rid: str,
    subject: str,
    loinc: str,
    value: float,
    unit: str,
    *,
    version: str = "1",
    updated: str = FIRST,
) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": rid,
        "meta": {"versionId": version, "lastUpdated": updated},
        "status": "final",
        "category": [
            {"coding": [{"system": f"{TERMINOLOGY}/observation-category", "code": "laboratory"}]}
        ],
        "code": {"coding": [{"system": LOINC, "code": loinc}]},
        "subject": {"reference": subject},
        "effectiveDateTime": TAKEN,
        "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit},
    }


def condition(rid: str, subject: str, clinical: str) -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "id": rid,
        "meta": {"versionId": "1", "lastUpdated": FIRST},
        "clinicalStatus": {
            "coding": [{"system": f"{TERMINOLOGY}/condition-clinical", "code": clinical}]
        },
        "verificationStatus": {
            "coding": [{"system": f"{TERMINOLOGY}/condition-ver-status", "code": "confirmed"}]
        },
        "code": {"coding": [{"system": SNOMED_CT, "code": "44054006"}]},
        "subject": {"reference": subject},
        "recordedDate": "2026-11-01T00:00:00+00:00",
    }


def allergy(
    rid: str,
    subject: str,
    clinical: str,
    verification: str,
    *,
    version: str = "1",
    updated: str = FIRST,
) -> dict[str, Any]:
    return {
        "resourceType": "AllergyIntolerance",
        "id": rid,
        "meta": {"versionId": version, "lastUpdated": updated},
        "clinicalStatus": {
            "coding": [{"system": f"{TERMINOLOGY}/allergyintolerance-clinical", "code": clinical}]
        },
        "verificationStatus": {
            "coding": [
                {"system": f"{TERMINOLOGY}/allergyintolerance-verification", "code": verification}
            ]
        },
        "code": {"coding": [{"system": RXNORM, "code": "70618"}]},
        "patient": {"reference": subject},
        "recordedDate": "2026-11-01T00:00:00+00:00",
    }
