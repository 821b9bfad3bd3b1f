"""Identity review tasks for tests: two look-alike patients from two sources, the second of
which becomes a review task (not a link) against the first."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import asyncpg

from builders import ingested_fhir, raw
from concord.events import codec
from concord.events.raw import RawEvent
from concord.normalization.identity.demographics import from_fhir_patient
from concord.normalization.identity.resolution import How, IdentityRequest
from concord.normalization.identity_store import PostgresIdentityStore
from concord.topics import INGESTED


@dataclass(frozen=True)
class Person:
    """A patient's demographics, drawn from the run (the session's database is shared: no
    other test's patient may look alike)."""

    family: str
    given: str
    birth: str
    phone: str
    postal: str
    line: str = "12 Elm St"

    def fhir(self, source: str, pid: str, version: str = "1") -> dict[str, Any]:
        return {
            "resourceType": "Patient",
            "id": pid,
            "meta": {"versionId": version, "lastUpdated": f"2024-03-0{version}T12:00:00Z"},
            "identifier": [{"system": f"urn:{source}:mrn", "value": pid}],
            "name": [{"family": self.family, "given": [self.given]}],
            "birthDate": self.birth,
            "gender": "female",
            "telecom": [{"system": "phone", "value": self.phone}],
            "address": [{"postalCode": self.postal, "line": [self.line]}],
        }

    def request(self, source: str, pid: str) -> IdentityRequest:
        return IdentityRequest(
            source=source,
            local_ids=(f"Patient/{pid}", f"id:urn:{source}:mrn|{pid}"),
            demographics=from_fhir_patient(self.fhir(source, pid), source),
        )

    def event(self, source: str, pid: str, version: str = "1") -> RawEvent:
        record = ingested_fhir(self.fhir(source, pid, version), source)
        return raw(codec.INGESTED_RECORD.encode(record), topic=INGESTED)


def look_alikes(run: str) -> tuple[Person, Person]:
    """Same names and birth year, another day, phone and postal code: a review (~13.3 bits),
    not a link, as in test_identity_store."""
    n = int(hashlib.sha256(run.encode()).hexdigest()[:12], 16)
    year, month, day = 1920 + n % 70, n // 70 % 12 + 1, n // 840 % 28 + 1
    family = f"Vantreck{run}"
    given = "Mar" + run.translate(str.maketrans("0123456789", "ghijklmnop"))
    known = Person(
        family, given, f"{year}-{month:02d}-{day:02d}",
        f"555-{n % 800 + 100}-{n // 800 % 9000 + 1000}", f"{n // 7_200_000 % 90000 + 10000}",
    )  # fmt: skip
    maybe = Person(
        family, given, f"{year}-{(month + 4) % 12 + 1:02d}-{(day + 13) % 28 + 1:02d}",
        f"555-{n // 7 % 800 + 100}-{n // 9 % 9000 + 1000}",
        f"{(n // 7_200_000 + 1) % 90000 + 10000}", line="7 Oak Ave",
    )  # fmt: skip
    return known, maybe


async def task_of(pool: asyncpg.Pool, source: str) -> str:
    [task_id] = [
        r["task_id"]
        for r in await pool.fetch(
            "SELECT task_id FROM identity_review_tasks WHERE source = $1", source
        )
    ]
    return str(task_id)


async def review_task_of(
    store: PostgresIdentityStore, run: str
) -> tuple[str, str, str, Person, Person]:
    """Patient/1 of source a (the candidate), then Patient/2 of source b, which may be her:
    (task id, provisional id, candidate id, her, the look-alike)."""
    known, maybe = look_alikes(run)
    [candidate] = await store.resolve_batch([known.request(f"a{run}", "1")])
    [review] = await store.resolve_batch([maybe.request(f"b{run}", "2")])
    assert (candidate.how, review.how) == (How.NEW, How.REVIEW)
    assert review.review_candidate == candidate.enterprise_id
    task_id = await task_of(store.pool, f"b{run}")
    return task_id, review.enterprise_id, candidate.enterprise_id, known, maybe
