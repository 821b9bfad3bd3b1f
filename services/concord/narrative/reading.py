"""A document's findings → ClinicalFacts and review candidates, pure.

A finding at or above the policy's `text.min_confidence` is a fact of the ONCOLOGY class,
its provenance the document's with the words that say it (TextEvidence); below, it is a
candidate a reviewer decides. A fact's id derives from the record, the part of it the text
is and the attribute, so a redelivered document repeats its facts; its effective time is when
the document was written.

A later version of a document (or its withdrawal) that no longer states an attribute an
earlier one did withdraws it: the worker remembers, per document of a source record, which
attributes it last asserted (the normalization stage's record_facts memory, under the key
`<source record id>#<part>`), and `withdrawn_facts` turns what is no longer said into DELETED
facts, as normalization does for a deleted record. It also remembers, under the record's own
key, what all the record's texts assert: normalization, which sees the source's DELETE of the
record, withdraws that as it withdraws any record's facts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from concord.clinical_text.extract import TextFinding
from concord.events.models import ClinicalDocument, ClinicalFact, Provenance, TextEvidence
from concord.normalization.facts.withdrawals import RecordKey, Remembered, RememberedFact

EXCERPT_CHARS = 200
# A finding a reviewer accepted (a text review task): a fact as the worker would have made it.
ACCEPTED_BY_REVIEWER = "ACCEPTED_BY_REVIEWER"


@dataclass(frozen=True)
class Candidate:
    """A finding not sure enough to be a fact: a review task."""

    task_id: str
    patient_id: str
    attribute: str
    value: str
    confidence: float
    assertion: str
    document: ClinicalDocument
    provenance: Provenance  # the document's, with the finding's TextEvidence


@dataclass(frozen=True)
class Reading:
    facts: tuple[ClinicalFact, ...]
    candidates: tuple[Candidate, ...]


def _hash(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


def read_findings(
    document: ClinicalDocument,
    findings: Iterable[TextFinding],
    *,
    method: str,
    min_confidence: float,
) -> Reading:
    facts: list[ClinicalFact] = []
    candidates: list[Candidate] = []
    text = document.text or ""
    for finding in findings:
        evidence = TextEvidence(
            kind=document.kind,
            document=document.part,
            section=finding.section,
            start=finding.start,
            end=finding.end,
            excerpt=text[finding.start : finding.end][:EXCERPT_CHARS],
            assertion=finding.assertion,
            confidence=finding.confidence,
            method=method,
        )
        provenance = document.provenance.model_copy(update={"text": evidence})
        if finding.confidence < min_confidence:
            task_id = _hash(document.document_id, finding.attribute)
            candidates.append(
                Candidate(task_id, document.patient_id, finding.attribute, finding.value,
                          finding.confidence, finding.assertion, document, provenance)
            )  # fmt: skip
            continue
        facts.append(_fact(document, finding.attribute, finding.value, provenance))
    return Reading(tuple(facts), tuple(candidates))


def _fact(
    document: ClinicalDocument, attribute: str, value: str | None, provenance: Provenance
) -> ClinicalFact:
    return ClinicalFact(
        fact_id=_hash(document.record_id, document.part, attribute),
        patient_id=document.patient_id,
        attribute=attribute,
        attribute_class="ONCOLOGY",
        value=value,
        status="ASSERTED" if value is not None else "DELETED",
        provenance=provenance,
        record_id=document.record_id,
        effective_time=document.authored_time,
        effective_text=document.authored_text,
        flags=document.flags,
        subject=document.subject,
    )


def accepted_fact(
    *,
    patient_id: str,
    subject: str | None,
    attribute: str,
    value: str,
    record_id: str,
    provenance: Provenance,
    effective_time: datetime | None,
) -> ClinicalFact:
    """The fact of a review task a reviewer accepted: the id the worker gives the finding's
    fact (record, part, attribute), flagged ACCEPTED_BY_REVIEWER."""
    part = provenance.text.document if provenance.text is not None else ""
    return ClinicalFact(
        fact_id=_hash(record_id, part, attribute),
        patient_id=patient_id,
        attribute=attribute,
        attribute_class="ONCOLOGY",
        value=value,
        status="ASSERTED",
        provenance=provenance,
        record_id=record_id,
        effective_time=effective_time,
        flags=(ACCEPTED_BY_REVIEWER,),
        subject=subject,
    )


def memory_key(document: ClinicalDocument) -> RecordKey:
    """One memory per text of a source record, shared by all its versions."""
    provenance = document.provenance
    return (provenance.source_system, f"{provenance.source_record_id}#{document.part}")


def record_memory_key(document: ClinicalDocument) -> RecordKey:
    """The record's own memory key, as normalization's: its delete finds what its texts said
    there (normalization remembers no fact of a DocumentReference or DiagnosticReport)."""
    provenance = document.provenance
    return (provenance.source_system, provenance.source_record_id)


def record_remembered(
    document: ClinicalDocument, part: Remembered, previous: Remembered | None
) -> Remembered:
    """What all of a record version's texts assert, for its delete to withdraw: this text's
    attributes with those its other texts of the same version said (each text is a document
    of its own, so the record's memory is gathered one text at a time)."""
    earlier = previous.facts if previous and previous.event_time == part.event_time else ()
    facts = {f.attribute: f for f in (*earlier, *part.facts)}
    return Remembered(
        key=record_memory_key(document),
        patient_id=part.patient_id,
        subject=part.subject,
        event_time=part.event_time,
        facts=tuple(facts[a] for a in sorted(facts)),
    )


def remembered(document: ClinicalDocument, facts: Sequence[ClinicalFact]) -> Remembered:
    """What the document asserts now (nothing, once withdrawn): what a later version that no
    longer says it withdraws."""
    return Remembered(
        key=memory_key(document),
        patient_id=document.patient_id,
        subject=document.subject,
        event_time=document.provenance.event_time,
        facts=tuple(RememberedFact(a, "ONCOLOGY") for a in sorted({f.attribute for f in facts})),
    )


def withdrawn_facts(
    document: ClinicalDocument, previous: Remembered | None, facts: Sequence[ClinicalFact]
) -> list[ClinicalFact]:
    """DELETED facts for what the document's earlier version asserted and this one does not
    (all of it when the source withdrew the document). An older version arriving late
    withdraws nothing: the newer one's memory stands."""
    if previous is None or previous.event_time > document.provenance.event_time:
        return []
    said = {f.attribute for f in facts}
    patient = previous.linked_patient_id or previous.patient_id
    withdrawn = document.model_copy(update={"patient_id": patient})
    return [
        _fact(withdrawn, fact.attribute, None, document.provenance)
        for fact in previous.facts
        if fact.attribute not in said
    ]
