"""Narrative documents with the hard cases of clinical text, through the stack (issue 18).

`narratives.narrative_documents` writes surgical pathology reports and clinician notes whose
text holds negated, possible, hypothetical, historical and family mentions and receptor
details, each with its key (`expected` facts, `traps`). This scenario gives `--narratives`
of them to generated persons, one each, rendered in the format of the registration that
holds it (FHIR DocumentReference / DiagnosticReport, HL7 v2 MDM^T02 / ORU^R01 with OBX TX
lines), and writes their key to `scenarios.narratives`, so that `concord evaluate` can score
what the narrative worker read from them against it.

They must not change what the conflicts evaluation scores: they go only to persons outside
the conflicts cohort (planted persons and controls, generate/planted.py), adults who are no
hard negative, held by one source first (then by several: no one outside the cohort has any
coded oncology, and one document per person states one value per attribute, so a text
finding has nothing to disagree with). The texts are standalone: the age, sex and name in
them are not the person's.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from concord.generate import narratives
from concord.generate.config import CLAIMS
from concord.generate.model import NoteFact, Person, Registration, World
from concord.generate.planted import PlantedConflicts
from concord.generate.scenarios import Scenario

_ADULT_DAYS = 18 * 366

# What a document is sent as, by the source's format and the document's kind.
_RESOURCE_TYPES = {
    ("fhir", narratives.PATHOLOGY): "DiagnosticReport",
    ("fhir", narratives.NOTE): "DocumentReference",
    ("hl7v2", narratives.PATHOLOGY): "ORU^R01",
    ("hl7v2", narratives.NOTE): "MDM^T02",
}


def record_ref(source_format: str, kind: str, document_id: str) -> str:
    """The document's record as ingestion names it (provenance.source_record_id): a FHIR
    resource's type and id, an HL7 message's type and MSH-10 (the document id, both)."""
    return f"{_RESOURCE_TYPES[(source_format, kind)]}/{document_id}"


@dataclass(frozen=True)
class Placed:
    """One document and the registration that holds it."""

    registration: Registration
    document: narratives.NarrativeDocument

    @property
    def record_ref(self) -> str:
        source = self.registration.source
        return record_ref(source.format, self.document.kind, self.document.document_id)

    def as_json(self) -> dict[str, Any]:
        doc = self.document
        source = self.registration.source
        return {
            "person_id": self.registration.person_id,
            "source": source.name,
            "patient_key": self.registration.key,
            "resource_type": _RESOURCE_TYPES[(source.format, doc.kind)],
            "record_ref": self.record_ref,
            "document_id": doc.document_id,
            "kind": doc.kind,
            "title": doc.title,
            "written": doc.written.isoformat(),
            "expected": [{"attribute": e.attribute, "value": e.value} for e in doc.expected],
            "traps": [
                {
                    "attribute": t.attribute,
                    "value": t.value,
                    "assertion": t.assertion,
                    "phrase": t.phrase,
                }
                for t in doc.traps
            ],
        }


class NarrativeSet(Scenario):
    name = "narratives"

    def __init__(self, conflicts: PlantedConflicts) -> None:
        self.conflicts = conflicts
        self.placed: list[Placed] = []

    def shape_registrations(self, world: World) -> None:
        """Runs after the planted conflicts (their cohort is chosen in shape_population)."""
        self.placed = []
        wanted = world.config.narrative_count
        if wanted == 0:
            return
        cohort = {p.person_id for p in self.conflicts.plants} | set(self.conflicts.controls)
        held: dict[str, list[Registration]] = {}
        for registration in world.registrations:
            if registration.source.format != CLAIMS and registration.number == 1:
                held.setdefault(registration.person_id, []).append(registration)
        as_of = world.config.as_of.date()
        candidates = [
            p
            for p in world.persons
            if p.person_id not in cohort and p.person_id in held and _fits(p, as_of.toordinal())
        ]
        rng = world.rng(self.name)
        rng.shuffle(candidates)
        # Persons one source holds first: nothing of theirs can meet another source's.
        candidates.sort(key=lambda p: len(held[p.person_id]) > 1)
        chosen = candidates[:wanted]
        documents = narratives.narrative_documents(world.rng(f"{self.name}:documents"), len(chosen))
        for person, document in zip(chosen, documents, strict=True):
            registration = rng.choice(held[person.person_id])
            registration.documents.append(
                NoteFact(
                    document.kind,
                    document.title,
                    document.text,
                    document.written,
                    tuple((e.attribute, e.value) for e in document.expected),
                    document_id=document.document_id,
                )
            )
            # A source registers a patient before it files anything about them.
            registration.registered = min(
                registration.registered, document.written - timedelta(days=1)
            )
            self.placed.append(Placed(registration, document))

    def key_section(self, world: World) -> list[dict[str, Any]]:
        return [placed.as_json() for placed in self.placed]


def _fits(person: Person, as_of_ordinal: int) -> bool:
    """An adult (the documents go back to 2019) who is no hard negative."""
    born = person.demographics.birth_date.toordinal()
    return as_of_ordinal - born >= _ADULT_DAYS and not person.exact and not person.related
