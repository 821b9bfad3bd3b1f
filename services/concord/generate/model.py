"""The generator's plan: true persons, what each source registered about them, and the
clinical facts each source holds. Scenarios edit the plan; renderers turn it into records."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Literal

from concord.generate.catalogue import ConditionConcept, Drug, LabTest, Reaction, Substance
from concord.generate.config import GeneratorConfig, SourceSpec

Sex = Literal["male", "female"]


@dataclass(frozen=True)
class Address:
    line: str
    city: str
    state: str
    postal_code: str


@dataclass(frozen=True)
class Demographics:
    family: str
    given: tuple[str, ...]  # first name, then middle names
    sex: Sex | None
    birth_date: date
    address: Address | None
    phone: str | None  # ten digits; each source formats it its own way
    suffix: str | None = None


@dataclass(frozen=True)
class LabResult:
    test: LabTest
    value: float  # in the test's conventional unit; a source in SI units converts it


@dataclass(frozen=True)
class LabDraw:
    """One specimen and the results measured on it: an HL7 ORU, or one Observation each."""

    draw_id: str
    taken: datetime
    results: tuple[LabResult, ...]


@dataclass(frozen=True)
class ConditionFact:
    concept: ConditionConcept
    onset: date
    status: Literal["active", "resolved"] = "active"
    abated: date | None = None


AllergyStatus = Literal["active", "inactive", "refuted", "entered-in-error"]


@dataclass(frozen=True)
class AllergyFact:
    substance: Substance
    criticality: Literal["low", "high"]
    reaction: Reaction
    recorded: date
    # What one source says of it: planted disagreements set the last three (FHIR only).
    status: AllergyStatus = "active"


@dataclass(frozen=True)
class MedicationFact:
    """A medication statement (FHIR MedicationStatement); only planted disagreements and
    stale records hold these."""

    drug: Drug
    status: Literal["active", "stopped"]
    dose_mg: float
    asserted: datetime  # when the source last said it (meta.lastUpdated)


@dataclass(frozen=True)
class TumorFact:
    """A cancer diagnosis as a FHIR Condition coded in ICD-10-CM, with a stage when staged;
    also a code billed with one (Z17.0/Z17.1 estrogen receptor status, C77-C79 secondary)."""

    icd10: str
    display: str
    stage: str | None  # SNOMED CT stage code (258215001 |Stage 1| ...)
    asserted: datetime


@dataclass(frozen=True)
class MarkerResult:
    """A pathology result coded SNOMED CT (a FHIR Observation with valueCodeableConcept)."""

    loinc: str
    display: str
    result: str  # SNOMED CT 10828004 |Positive| or 260385009 |Negative|
    taken: datetime


@dataclass(frozen=True)
class NoteFact:
    """A narrative document one source holds: a clinician's progress note (a FHIR
    DocumentReference, an HL7 MDM^T02) or a pathology report (a FHIR DiagnosticReport with
    presentedForm, an HL7 ORU^R01 with OBX TX lines). `stated` is what its text says about the
    patient now, as the narrative worker keys it (concord.clinical_text.concepts)."""

    kind: str  # narratives.NOTE ("note-text") or narratives.PATHOLOGY ("pathology-text")
    title: str
    text: str  # lines separated by "\n"
    written: datetime
    stated: tuple[tuple[str, str], ...]  # (attribute, value), sorted
    # The record's id (FHIR id, HL7 MSH-10) when the scenario names it, so that its answer key
    # can give the record_ref before rendering (generate/narrative_set.py); None: the source's
    # next id.
    document_id: str | None = None


@dataclass
class Person:
    """A true person. person_id is what the answer key calls them, and the value of the
    shared identifier on the records that carry one."""

    person_id: str
    demographics: Demographics
    locale: str
    sources: list[str] = field(default_factory=list)
    draws: list[LabDraw] = field(default_factory=list)
    conditions: list[ConditionFact] = field(default_factory=list)
    allergies: list[AllergyFact] = field(default_factory=list)
    # (kind, other person id): persons who must never be linked with this one.
    related: list[tuple[str, str]] = field(default_factory=list)
    # Hard-negative persons keep their demographics exact, so that telling them apart is
    # possible at all; their difficulty is what they share with the other person.
    exact: bool = False


@dataclass
class Registration:
    """A person as one source holds them under one local MRN: a Patient resource, or the
    PID of every HL7 message about them. number 2 is a second MRN at the same source."""

    source: SourceSpec
    person_id: str
    mrn: str
    patient_id: str  # FHIR Patient.id (HL7 sources do not use it)
    number: int
    demographics: Demographics
    registered: datetime
    shared_id: bool
    variations: list[str] = field(default_factory=list)
    draws: list[LabDraw] = field(default_factory=list)
    conditions: list[ConditionFact] = field(default_factory=list)
    allergies: list[AllergyFact] = field(default_factory=list)
    medications: list[MedicationFact] = field(default_factory=list)
    tumors: list[TumorFact] = field(default_factory=list)
    markers: list[MarkerResult] = field(default_factory=list)
    documents: list[NoteFact] = field(default_factory=list)
    # HL7 only: also send an ADT^A08 after the A04, as registration systems do on any edit.
    updated: datetime | None = None

    @property
    def key(self) -> str:
        return f"{self.source.name}|{self.mrn}"


@dataclass
class World:
    config: GeneratorConfig
    persons: list[Person] = field(default_factory=list)
    registrations: list[Registration] = field(default_factory=list)
    _mrns: dict[str, set[str]] = field(default_factory=dict)
    _patient_ids: set[str] = field(default_factory=set)

    def rng(self, purpose: str) -> random.Random:
        """A stream of its own per purpose, so adding a scenario never changes what the
        existing ones draw for the same seed."""
        return random.Random(f"{self.config.seed}:{purpose}")  # noqa: S311 - synthetic data

    def source(self, name: str) -> SourceSpec:
        return next(s for s in self.config.sources if s.name == name)

    def new_mrn(self, source: SourceSpec, rng: random.Random) -> str:
        taken = self._mrns.setdefault(source.name, set())
        while True:
            mrn = f"{source.mrn_prefix}{rng.randrange(10**6, 10**7)}"
            if mrn not in taken:
                taken.add(mrn)
                return mrn

    def new_patient_id(self, source: SourceSpec, rng: random.Random) -> str:
        while True:
            if source.style.ids == "uuid":
                candidate = uuid_from(rng)
            else:
                candidate = f"{source.mrn_prefix.lower()}-{rng.randrange(10**7, 10**8)}"
            if candidate not in self._patient_ids:
                self._patient_ids.add(candidate)
                return candidate


def uuid_from(rng: random.Random) -> str:
    hex_digits = f"{rng.getrandbits(128):032x}"
    # Version 4 and the RFC 4122 variant, as a real system's random UUIDs would carry.
    text = hex_digits[:12] + "4" + hex_digits[13:16] + "8" + hex_digits[17:]
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"
