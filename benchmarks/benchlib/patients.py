"""FHIR Patients as two EHRs send them, in pairs that agree or disagree on the birth date:
the input of parts 1 and 2 of pipeline.py."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta

import orjson

from concord.config import DEFAULT_ENTERPRISE_ID_SYSTEM
from concord.topics import RAW_FHIR

from .backend import bulk_producing

SOURCES = ("bench-hospital", "bench-lab")


def patient_json(enterprise_id: str, resource_id: str, birth_date: str) -> bytes:
    """A FHIR R4 Patient (the shape of tests/e2e/pipeline_tools.patient)."""
    return orjson.dumps(
        {
            "resourceType": "Patient",
            "id": resource_id,
            "meta": {"versionId": "1", "lastUpdated": "2026-01-01T00:00:00+00:00"},
            "identifier": [
                {"system": "urn:test:mrn", "value": resource_id},
                {"system": DEFAULT_ENTERPRISE_ID_SYSTEM, "value": enterprise_id},
            ],
            "name": [{"use": "official", "family": "Benchperson", "given": ["Alex"]}],
            "gender": "female",
            "birthDate": birth_date,
        }
    )


@dataclass(frozen=True)
class RawPatient:
    source: str
    value: bytes
    triggers: str | None = None  # the enterprise id whose alert this (second) event triggers


def patient_pairs(prefix: str, pairs: int, disagree_every: int) -> list[RawPatient]:
    """`pairs` enterprise ids, each sent by both sources in turn; every `disagree_every`-th
    pair disagrees on birthDate (1 = all of them)."""
    events = []
    for i in range(pairs):
        eid = f"{prefix}-{i:06d}"
        born = date(1940, 1, 1) + timedelta(days=i % 25_000)
        other = born + timedelta(days=1) if i % disagree_every == 0 else born
        events.append(RawPatient(SOURCES[0], patient_json(eid, f"{eid}-h", born.isoformat())))
        events.append(
            RawPatient(
                SOURCES[1],
                patient_json(eid, f"{eid}-l", other.isoformat()),
                triggers=eid if other != born else None,
            )
        )
    return events


async def publish_raw(bootstrap: str, events: Sequence[RawPatient]) -> None:
    async with bulk_producing(bootstrap) as producer:
        futures = [
            await producer.send(RAW_FHIR, e.value, headers=[("source", e.source.encode())])
            for e in events
        ]
        await asyncio.gather(*futures)
