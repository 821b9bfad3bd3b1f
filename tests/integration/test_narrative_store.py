"""The narrative stage on a real PostgreSQL (issue 18): its text review tasks (migration
0020) kept once per document and attribute, and its memory of what each document asserted
(record_facts, one key per text of a record) withdrawing what a newer version no longer says."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import orjson
import pytest

from builders import raw
from concord.clinical_text import concepts as c
from concord.events import codec
from concord.events.models import ClinicalDocument, Provenance
from concord.narrative.app import NarrativeStage
from concord.narrative.review_tasks import PostgresTextReviews
from concord.normalization.record_facts import PostgresRecordFacts
from concord.runtime.batch import Outbound, run_batch
from concord.stack.postgres import PostgresInfo
from concord.topics import DOCUMENTS, FACTS

pytestmark = pytest.mark.integration

T0 = datetime(2024, 3, 1, 12, tzinfo=UTC)
REPORT = (
    "FINAL DIAGNOSIS:\nRIGHT LUNG, UPPER LOBE, WEDGE RESECTION:\n- Invasive adenocarcinoma.\n"
    "- PD-L1 (22C3) TPS: 60%.\n- Suspicious for pleural involvement; cannot rule out "
    "metastatic disease.\n"
)


def _document(source: str, patient: str, text: str, *, version: int) -> ClinicalDocument:
    at = T0 + timedelta(hours=version)
    return ClinicalDocument(
        document_id=f"{source}-doc-{version}",
        patient_id=patient,
        subject="Patient/p1",
        record_id=f"{source}-rec-{version}",
        provenance=Provenance(
            source_system=source,
            source_record_id="DiagnosticReport/r1",
            source_record_version=str(version),
            event_time=at,
            received_time=at,
            raw_topic="ehr.raw.fhir",
            raw_partition=0,
            raw_offset=version,
            payload_sha256="ab" * 32,
        ),
        part="presentedForm/0",
        kind="pathology-text",
        media_type="text/plain",
        authored_time=at,
        text=text,
    )


def _stage(pool: asyncpg.Pool) -> NarrativeStage:
    return NarrativeStage(PostgresRecordFacts(pool), PostgresTextReviews(pool), min_confidence=0.7)


@pytest.mark.asyncio
async def test_findings_become_facts_and_review_tasks_kept_once(pool: asyncpg.Pool) -> None:
    source, patient = f"path-{uuid.uuid4().hex[:8]}", f"E-{uuid.uuid4().hex[:8]}"
    event = raw(codec.CLINICAL_DOCUMENT.encode(_document(source, patient, REPORT, version=1)),
                topic=DOCUMENTS)  # fmt: skip
    out = await run_batch(_stage(pool), [event])
    facts = {f.attribute: f for f in (codec.CLINICAL_FACT.decode(r.value) for r in out.pending
                                      if r.topic == FACTS)}  # fmt: skip
    assert facts[c.PRIMARY_SITE].value == "C34" and facts[c.PDL1_TPS].value == "60"
    await run_batch(_stage(pool), [event])  # redelivered: the same task, not a second one
    rows = await pool.fetch(
        "SELECT attribute, value, assertion, status, evidence FROM text_review_tasks "
        "WHERE patient_id = $1",
        patient,
    )
    assert [(r["attribute"], r["value"], r["assertion"], r["status"]) for r in rows] == [
        (c.METASTATIC, "true", "possible", "OPEN")
    ]
    evidence = orjson.loads(rows[0]["evidence"])
    assert evidence["source_record_id"] == "DiagnosticReport/r1"
    assert (
        REPORT[evidence["text"]["start"] : evidence["text"]["end"]] == evidence["text"]["excerpt"]
    )


@pytest.mark.asyncio
async def test_a_newer_version_withdraws_what_it_no_longer_says(pool: asyncpg.Pool) -> None:
    source, patient = f"path-{uuid.uuid4().hex[:8]}", f"E-{uuid.uuid4().hex[:8]}"
    first = _document(source, patient, REPORT, version=1)
    await run_batch(_stage(pool), [raw(codec.CLINICAL_DOCUMENT.encode(first), topic=DOCUMENTS)])
    amended = _document(source, patient, REPORT.replace("- PD-L1 (22C3) TPS: 60%.\n", ""),
                        version=2)  # fmt: skip
    # A new stage: what the first version said is remembered in PostgreSQL, not in memory.
    out = await run_batch(
        _stage(pool), [raw(codec.CLINICAL_DOCUMENT.encode(amended), topic=DOCUMENTS)]
    )
    facts = {f.attribute: f for f in (codec.CLINICAL_FACT.decode(r.value) for r in out.pending
                                      if r.topic == FACTS)}  # fmt: skip
    assert facts[c.PDL1_TPS].status == "DELETED" and facts[c.PRIMARY_SITE].status == "ASSERTED"
    memory = await pool.fetchval(
        "SELECT facts FROM record_facts WHERE source = $1 AND source_record_id = $2",
        source,
        "DiagnosticReport/r1#presentedForm/0",
    )
    assert c.PDL1_TPS not in memory and c.PRIMARY_SITE in memory


@pytest.mark.asyncio
async def test_the_idle_worker_checks_its_database_on_each_tick(
    pool: asyncpg.Pool, postgres: PostgresInfo
) -> None:
    """Normalization sends nothing while PostgreSQL is away, so the narrative worker learns of
    an outage from its tick: it raises (the loop retries it and reports not ready)."""
    await _stage(pool).on_tick(set(), Outbound("narrative"))  # answers: nothing raised
    closed = await asyncpg.create_pool(postgres.dsn, min_size=1, max_size=1)
    await closed.close()
    with pytest.raises(asyncpg.InterfaceError):
        await _stage(closed).on_tick(set(), Outbound("narrative"))
