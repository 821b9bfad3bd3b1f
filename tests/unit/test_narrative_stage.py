"""The narrative stage on fakes (issue 18): documents in, facts read from their text out,
findings below the policy's confidence kept for review, and what a newer version or a
withdrawal no longer says withdrawn."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest

from builders import FakeIdentities, raw
from concord.clinical_text import concepts as c
from concord.config import NormalizationSettings
from concord.events import codec
from concord.events.models import ClinicalDocument, ClinicalFact, IngestedRecord, Provenance
from concord.narrative.app import NarrativeStage
from concord.narrative.ports import TextReviews
from concord.narrative.reading import Candidate
from concord.normalization.app import NormalizationStage
from concord.normalization.record_facts import InMemoryRecordFacts
from concord.normalization.terminology import Terminology
from concord.runtime.batch import Outbound, run_batch
from concord.topics import DEADLETTER, DOCUMENTS, FACTS, INGESTED

REPORT = (
    "FINAL DIAGNOSIS:\nLEFT BREAST, CORE BIOPSY:\n- Invasive ductal carcinoma, grade 2.\n"
    "ER: Positive (90%)\nPathologic stage: pT2 pN0\n"
    "Cannot rule out lymphovascular invasion; cannot rule out metastatic disease.\n"
)


class FakeReviews(TextReviews):
    def __init__(self) -> None:
        self.tasks: dict[str, Candidate] = {}

    async def add(self, candidates: Sequence[Candidate]) -> None:
        for candidate in candidates:
            self.tasks.setdefault(candidate.task_id, candidate)

    async def reachable(self) -> None:
        return None


def document(
    text: str | None, *, version: str = "1", hours: int = 0, **fields: object
) -> ClinicalDocument:
    moment = datetime(2024, 3, 1, tzinfo=UTC) + timedelta(hours=hours)
    return ClinicalDocument(
        document_id=f"doc-{version}",
        patient_id="E-1",
        subject="Patient/p1",
        record_id=f"rec-{version}",
        provenance=Provenance(
            source_system="path-lab",
            source_record_id="DiagnosticReport/r1",
            source_record_version=version,
            event_time=moment,
            received_time=moment,
            raw_topic="ehr.raw.fhir",
            raw_partition=0,
            raw_offset=int(version),
            payload_sha256="ab" * 32,
        ),
        media_type="text/plain",
        authored_time=moment,
        authored_text=moment.isoformat(),
        text=text,
        **{"kind": "pathology-text", "part": "presentedForm/0", **fields},  # type: ignore[arg-type]
    )


def facts(out: Outbound) -> dict[str, ClinicalFact]:
    found = [codec.CLINICAL_FACT.decode(r.value) for r in out.pending if r.topic == FACTS]
    return {f.attribute: f for f in found}


def as_raw(*documents: ClinicalDocument) -> list:  # type: ignore[type-arg]
    return [raw(codec.CLINICAL_DOCUMENT.encode(d), topic=DOCUMENTS, offset=i)
            for i, d in enumerate(documents)]  # fmt: skip


@pytest.fixture
def stage() -> NarrativeStage:
    return NarrativeStage(InMemoryRecordFacts(), FakeReviews(), min_confidence=0.7)


@pytest.mark.asyncio
async def test_a_report_becomes_facts_with_the_words_that_say_them(stage: NarrativeStage) -> None:
    out = await run_batch(stage, as_raw(document(REPORT)))
    found = facts(out)
    assert found[c.PRIMARY_SITE].value == "C50"
    assert found[c.HISTOLOGY].value == "8500/3"
    assert found[c.BIOMARKER_PREFIX + "ER"].value == "positive"
    assert (found[c.TNM_T].value, found[c.TNM_N].value) == ("T2", "N0")
    er = found[c.BIOMARKER_PREFIX + "ER"]
    assert er.attribute_class == "ONCOLOGY"
    evidence = er.provenance.text
    assert evidence is not None and evidence.kind == "pathology-text"
    assert REPORT[evidence.start : evidence.end] == evidence.excerpt
    assert evidence.excerpt.startswith("ER") and evidence.method.startswith("medspacy-")
    assert er.effective_time == datetime(2024, 3, 1, tzinfo=UTC)
    assert all(r.key == b"E-1" for r in out.pending)


@pytest.mark.asyncio
async def test_a_possible_finding_is_a_review_task_not_a_fact(stage: NarrativeStage) -> None:
    out = await run_batch(stage, as_raw(document(REPORT)))
    assert c.METASTATIC not in facts(out)
    reviews = stage.reviews
    assert isinstance(reviews, FakeReviews)
    [task] = [t for t in reviews.tasks.values() if t.attribute == c.METASTATIC]
    assert (task.value, task.assertion) == ("true", "possible") and task.confidence < 0.7
    assert task.provenance.text is not None and "metastatic" in task.provenance.text.excerpt


@pytest.mark.asyncio
async def test_what_a_newer_version_no_longer_says_is_withdrawn(stage: NarrativeStage) -> None:
    await run_batch(stage, as_raw(document(REPORT)))
    amended = REPORT.replace("ER: Positive (90%)\n", "")
    out = await run_batch(stage, as_raw(document(amended, version="2", hours=1)))
    found = facts(out)
    assert found[c.BIOMARKER_PREFIX + "ER"].status == "DELETED"
    assert found[c.BIOMARKER_PREFIX + "ER"].value is None
    assert found[c.PRIMARY_SITE].status == "ASSERTED"
    # A late copy of the first version withdraws nothing the second said.
    late = await run_batch(stage, as_raw(document(REPORT, version="1")))
    assert all(f.status == "ASSERTED" for f in facts(late).values())


@pytest.mark.asyncio
async def test_a_withdrawn_document_withdraws_all_it_said(stage: NarrativeStage) -> None:
    await run_batch(stage, as_raw(document(REPORT)))
    out = await run_batch(stage, as_raw(document(None, version="2", hours=1, withdrawn=True)))
    found = facts(out)
    assert found and all(f.status == "DELETED" for f in found.values())
    assert c.PRIMARY_SITE in found and c.HISTOLOGY in found


@pytest.mark.asyncio
async def test_an_ordinary_note_yields_nothing(stage: NarrativeStage) -> None:
    note = "Annual visit. BP 124/80. Lungs clear. Stage 2 hypertension, start lisinopril."
    out = await run_batch(stage, as_raw(document(note, kind="note-text")))
    assert out.pending == []


@pytest.mark.asyncio
async def test_an_undecodable_document_is_dead_lettered_and_the_rest_read(
    stage: NarrativeStage,
) -> None:
    events = [raw(b"not avro", topic=DOCUMENTS, offset=0), *as_raw(document(REPORT))]
    out = await run_batch(stage, events)
    assert [r.topic for r in out.pending].count(DEADLETTER) == 1
    assert c.PRIMARY_SITE in facts(out)


@pytest.mark.asyncio
async def test_the_sources_delete_of_the_record_withdraws_what_its_texts_said() -> None:
    """Normalization sees the FHIR DELETE (a bare id): it finds, under the record's own key,
    what the narrative worker read from each of the record's texts, and withdraws it."""
    memory = InMemoryRecordFacts()
    narrative = NarrativeStage(memory, FakeReviews(), min_confidence=0.7)
    conclusion = document(
        "Final diagnosis: metastatic melanoma to the brain.", **{"part": "conclusion"}
    )
    await run_batch(narrative, as_raw(document(REPORT), conclusion))
    settings = NormalizationSettings(database_url="postgresql://unused@127.0.0.1:1/none")
    normalization = NormalizationStage(
        settings, FakeIdentities(), Terminology.load(), record_facts=memory
    )
    delete = IngestedRecord(
        record_id="rec-delete",
        format="FHIR_R4",
        resource_type="DiagnosticReport",
        operation="DELETE",
        payload=b"",
        provenance=document(None, version="3", hours=2).provenance,
    )
    out = await run_batch(
        normalization, [raw(codec.INGESTED_RECORD.encode(delete), topic=INGESTED)]
    )
    withdrawn = facts(out)
    assert {c.PRIMARY_SITE, c.HISTOLOGY, c.METASTATIC_SITE_PREFIX + "C79.3"} <= set(withdrawn)
    assert all(f.status == "DELETED" and f.patient_id == "E-1" for f in withdrawn.values())
