"""Text review tasks through the review API on a real PostgreSQL (issue 18): listed without
PHI, read with a purpose (audited), accepted into a fact published through the outbox, or
rejected; a decision stands."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio

from concord.clinical_text import concepts as c
from concord.events import codec
from concord.narrative.reading import ACCEPTED_BY_REVIEWER
from concord.review.access import PURPOSE_OF_USE_HEADER, Role
from concord.stack.postgres import PostgresInfo
from concord.topics import FACTS
from review_tools import AT, NOTE, ReviewApp, local_settings, plant_text_task, review_app

pytestmark = pytest.mark.integration

READ = {PURPOSE_OF_USE_HEADER: "TREAT"}


@pytest_asyncio.fixture
async def api(
    postgres: PostgresInfo, pool: asyncpg.Pool, tmp_path: Path
) -> AsyncIterator[ReviewApp]:
    review = review_app(pool, local_settings(tmp_path, dsn=postgres.dsn))
    async with review.client:
        yield review


@pytest.mark.asyncio
async def test_a_possible_finding_is_listed_read_and_accepted_into_a_fact(
    api: ReviewApp, pool: asyncpg.Pool
) -> None:
    task_id, patient = await plant_text_task(pool)
    reviewer = api.as_role(Role.REVIEWER, "ana")
    listed = await api.client.get("/api/v1/text/reviews?limit=200", headers=reviewer)
    assert listed.status_code == 200
    [entry] = [e for e in listed.json() if e["task_id"] == task_id]
    assert (entry["patient_id"], entry["assertion"], entry["kind"]) == (
        patient, "possible", "note-text"
    )  # fmt: skip
    assert "osseous" not in listed.text and "value" not in entry  # no words, no value

    refused = await api.client.get(f"/api/v1/text/reviews/{task_id}", headers=reviewer)
    assert refused.status_code == 422  # a read of PHI names its purpose
    detail = await api.client.get(f"/api/v1/text/reviews/{task_id}", headers={**reviewer, **READ})
    assert detail.status_code == 200
    body = detail.json()
    assert body["value"] == "true" and "osseous metastatic" in body["excerpt"]
    assert (
        NOTE[body["provenance"]["text"]["start"] : body["provenance"]["text"]["end"]]
        == (body["excerpt"])
    )
    reads = await pool.fetchval(
        "SELECT count(*) FROM audit_log WHERE action = 'text.read' AND object_id = $1", task_id
    )
    assert reads == 1

    accepted = await api.client.post(f"/api/v1/text/reviews/{task_id}/accept", headers=reviewer)
    assert accepted.status_code == 200 and accepted.json()["changed"] is True
    [fact] = [codec.CLINICAL_FACT.decode(v) for t, v, *_ in api.producer.sent if t == FACTS]
    assert (fact.patient_id, fact.attribute, fact.value) == (
        patient, c.METASTATIC_SITE_PREFIX + "C79.5", "true"
    )  # fmt: skip
    assert fact.flags == (ACCEPTED_BY_REVIEWER,) and fact.fact_id == accepted.json()["fact_id"]
    assert fact.provenance.text is not None and fact.provenance.text.kind == "note-text"
    assert fact.subject == "Patient/c1" and fact.effective_time == AT

    again = await api.client.post(f"/api/v1/text/reviews/{task_id}/accept", headers=reviewer)
    assert again.status_code == 200 and again.json()["changed"] is False
    other_way = await api.client.post(f"/api/v1/text/reviews/{task_id}/reject", headers=reviewer)
    assert other_way.status_code == 409 and "ACCEPTED" in other_way.json()["detail"]
    assert len([t for t, *_ in api.producer.sent if t == FACTS]) == 1


@pytest.mark.asyncio
async def test_a_rejected_finding_publishes_nothing_and_only_a_reviewer_decides(
    api: ReviewApp, pool: asyncpg.Pool
) -> None:
    task_id, _ = await plant_text_task(pool)
    clinician = await api.client.post(
        f"/api/v1/text/reviews/{task_id}/reject", headers=api.as_role(Role.CLINICIAN)
    )
    assert clinician.status_code == 403
    rejected = await api.client.post(
        f"/api/v1/text/reviews/{task_id}/reject", headers=api.as_role(Role.REVIEWER)
    )
    assert rejected.status_code == 200 and rejected.json()["decision"] == "REJECTED"
    assert not [t for t, *_ in api.producer.sent if t == FACTS]
    unknown = await api.client.post(
        "/api/v1/text/reviews/no-such-task/accept", headers=api.as_role(Role.REVIEWER)
    )
    assert unknown.status_code == 404
