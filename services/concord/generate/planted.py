"""Planted disagreements and stale records: the conflict detector's ground truth.

A share of the persons held by two or more sources (config.conflict_rate) each get one
planted disagreement or stale record of a kind below, and as many again are kept as
controls. Planted persons and controls form the *cohort*: every registration of theirs carries
the shared identifier (so that who is who is certain, and identity errors cannot pass for
detection errors), holds the person's true demographics and every true fact, and there is no
second MRN. Apart from the plant, their sources therefore agree on everything, and the answer
key can say exactly which conflicts and stale records the stack must raise for them: the plant's,
and nothing else.

Each plant lists what it must raise (`expect`): attribute keys as Concord keys them, and for a
stale record the source whose assertion goes stale and the time it does, under the built-in
policy (docs/policy.md). A stale record's time is absolute: an evaluation counts it once that
time has passed, so a set can be evaluated on any later day.

Two kinds put clinical text against coded data (issue 18): one source holds a narrative
document (planted_text.py: a progress note, a pathology report) whose text states one value,
the other source's codes imply another (the built-in policy's `derived:` attributes). For a
note the other side is a claim: the set's claims source (a payer, config.CLAIMS), which holds
no one by chance, registers the planted person and bills their cancer on a claim line. For a
pathology report it is a FHIR problem list. About two thirds of the controls that fit get a
document too, one that agrees with the coded cancer every FHIR source of theirs holds; where
that says something a claim can code (ER status, a secondary neoplasm), the claims source
bills the same codes: text and claims that agree must raise nothing.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from concord.conflicts.policy import DEFAULT_POLICY
from concord.events.models import AttributeClass
from concord.generate import variations
from concord.generate.catalogue import (
    BIOMARKERS,
    CANCERS,
    CONDITIONS,
    DRUGS,
    LAB_TESTS,
    METASTASES,
    REACTIONS,
    RECEPTOR_STATUS,
    STAGES,
    SUBSTANCES,
    Cancer,
)
from concord.generate.config import CLAIMS, SourceSpec
from concord.generate.model import (
    AllergyFact,
    AllergyStatus,
    ConditionFact,
    LabDraw,
    LabResult,
    MarkerResult,
    MedicationFact,
    NoteFact,
    Person,
    Registration,
    Sex,
    TumorFact,
    World,
)
from concord.generate.planted_text import (
    pathology_report,
    progress_note,
    sites_for,
    stage_groups,
)
from concord.generate.scenarios import Scenario

BIRTH_DATE = "birth_date"
SEX = "sex"
NAME = "name"
ALLERGY_STATUS = "allergy_status"
MEDICATION_STATUS = "medication_status"
MEDICATION_DOSE = "medication_dose"
CONDITION_STATUS = "condition_status"
LAB_VALUE = "lab_value"
ONCOLOGY_METASTATIC = "oncology_metastatic"
ONCOLOGY_STAGE = "oncology_stage"
ONCOLOGY_BIOMARKER = "oncology_biomarker"
ONCOLOGY_PRIMARY = "oncology_primary"
ONCOLOGY_NOTE = "oncology_note_vs_claim"
ONCOLOGY_PATHOLOGY = "oncology_pathology_vs_problem_list"
STALE_MAX_AGE = "stale_max_age"
STALE_RECONFIRM = "stale_reconfirm"

KINDS: dict[str, str] = {
    BIRTH_DATE: "two sources send different birth dates",
    SEX: "two sources send different administrative sexes",
    NAME: "two sources send different family names",
    ALLERGY_STATUS: "an allergy active in one source and inactive, refuted or entered in error "
    "in another",
    MEDICATION_STATUS: "a medication active in one source and stopped in another",
    MEDICATION_DOSE: "a medication active in two sources at different doses",
    CONDITION_STATUS: "a condition active in one source and resolved in another",
    LAB_VALUE: "one specimen's result differs between two sources beyond tolerance",
    ONCOLOGY_METASTATIC: "a secondary neoplasm (ICD-10-CM C77-C79) in one source, a stage 1-3 "
    "cancer in another: metastatic and not",
    ONCOLOGY_STAGE: "one cancer staged differently by two sources (stage groups 1-3)",
    ONCOLOGY_BIOMARKER: "one specimen's ER, PR, HER2, EGFR, ALK or PD-L1 status positive in "
    "one source and negative in another",
    ONCOLOGY_PRIMARY: "two sources name different primary cancers (ICD-10-CM categories)",
    ONCOLOGY_NOTE: "a clinician's progress note (FHIR DocumentReference, HL7 MDM^T02) states ER "
    "positive or negative, or no metastatic disease, and a payer's claim line codes the "
    "opposite (ICD-10-CM Z17.1/Z17.0 with the breast cancer; a C78/C79 secondary neoplasm "
    "with the primary cancer)",
    ONCOLOGY_PATHOLOGY: "a pathology report (FHIR DiagnosticReport, HL7 ORU^R01 text) stages a "
    "resected cancer one stage group (1-3), another source's problem list stages the same "
    "cancer another",
    STALE_MAX_AGE: "a source's result older than the maximum age while another source holds a "
    "newer, different one (one stale record per test of the panel)",
    STALE_RECONFIRM: "an active medication its source has not confirmed within the window",
}
# Kinds whose records only FHIR sources send here (medications, allergy and condition
# statuses, cancers and pathology are not in the generator's HL7 messages).
_FHIR_ONLY = frozenset(
    {
        ALLERGY_STATUS,
        MEDICATION_STATUS,
        MEDICATION_DOSE,
        CONDITION_STATUS,
        ONCOLOGY_METASTATIC,
        ONCOLOGY_STAGE,
        ONCOLOGY_BIOMARKER,
        ONCOLOGY_PRIMARY,
        STALE_RECONFIRM,
    }
)
_ONE_SOURCE = frozenset({STALE_RECONFIRM})
# Text against coded data: the document goes to any source (FHIR or HL7 v2), the coded side
# to a FHIR one (HL7 messages here carry no cancers), or for a note to the claims source.
# Written for adults of a known sex.
_TEXT = frozenset({ONCOLOGY_NOTE, ONCOLOGY_PATHOLOGY})
# Kinds whose coded side is a claim of the claims source, which registers the person for it.
_CLAIMED = frozenset({ONCOLOGY_NOTE})
# ICD-10-CM codes a claim bills with a cancer that say what a note says: ER status (Z17), a
# secondary neoplasm of a distant site (C78, C79).
_CLAIM_SAYS = ("Z17", "C78", "C79")
_TEXT_MIN_AGE = 30
_SURNAMES = ("Okafor", "Lindqvist", "Brennan", "Takahashi", "Moreau", "Castillo", "Novak")
CONTROL = "control"


@dataclass(frozen=True)
class Expected:
    """One conflict (stale_source None) or stale record the stack must raise."""

    kind: str
    attribute: str
    stale_source: str | None = None
    due: datetime | None = None
    record_ref: str | None = None  # a stale assertion's record, where the set names it
    why: str | None = None  # why the record falls stale, where the set explains it

    def as_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"kind": self.kind, "attribute": self.attribute}
        if self.stale_source is not None and self.due is not None:
            entry["stale_source"] = self.stale_source
            entry["due"] = self.due.isoformat()
        if self.record_ref is not None:
            entry["record_ref"] = self.record_ref
        if self.why is not None:
            entry["why"] = self.why
        return entry


@dataclass
class Plant:
    kind: str
    person_id: str
    sources: tuple[str, ...] = ()
    expect: tuple[Expected, ...] = ()


class PlantedConflicts(Scenario):
    name = "conflicts"

    def __init__(self) -> None:
        self.plants: list[Plant] = []
        self.controls: list[str] = []

    def shape_population(self, world: World) -> None:
        """Chooses the cohort and each planted person's kind (changing no person)."""
        self.plants, self.controls = [], []
        rng = world.rng(self.name)
        formats = {s.name: s.format for s in world.config.sources}
        claims = _claims_source(world)
        eligible = [
            p for p in world.persons if len(p.sources) >= 2 and not p.exact and not p.related
        ]
        rng.shuffle(eligible)
        planted = round(len(world.persons) * world.config.conflict_rate)
        counts: Counter[str] = Counter()
        chosen = iter(eligible)
        for person in chosen:
            if len(self.plants) == planted:
                break
            fhir = sum(1 for s in person.sources if formats[s] == "fhir")
            text = _fits_text(person, world.config.as_of)
            feasible = [
                k
                for k in KINDS
                if _feasible(k, fhir)
                and (text or k not in _TEXT)
                and (claims is not None or k != ONCOLOGY_NOTE)
            ]
            if not feasible:
                continue
            # The least planted kind so far: every kind appears, in about equal numbers.
            kind = min(feasible, key=lambda k: (counts[k], list(KINDS).index(k)))
            counts[kind] += 1
            self.plants.append(Plant(kind, person.person_id))
        self.controls = [p.person_id for p in itertools.islice(chosen, len(self.plants))]

    def shape_registrations(self, world: World) -> None:
        cohort = {plant.person_id for plant in self.plants} | set(self.controls)
        if not cohort:
            return
        world.registrations = [
            r for r in world.registrations if r.person_id not in cohort or r.number == 1
        ]
        persons = {p.person_id: p for p in world.persons if p.person_id in cohort}
        held: dict[str, dict[str, Registration]] = defaultdict(dict)
        for registration in world.registrations:
            if registration.person_id in cohort:
                _hold_everything(registration, persons[registration.person_id])
                held[registration.person_id][registration.source.name] = registration
        claims = _claims_source(world)
        for plant in self.plants:
            registrations = held[plant.person_id]
            if plant.kind in _CLAIMED and claims is not None:
                person = persons[plant.person_id]
                registrations[claims.name] = _claims_registration(world, person, claims)
            rng = world.rng(f"{self.name}:{plant.person_id}")
            _plant(plant, persons[plant.person_id], registrations, world, rng)
        for person_id in self.controls:
            rng = world.rng(f"{self.name}:control:{person_id}")
            coded = _agreeing_text(persons[person_id], held[person_id], world.config.as_of, rng)
            billable = [t for t in coded if t.icd10.startswith(_CLAIM_SAYS)]
            if billable and claims is not None:
                # What a claim can code of it (ER status, a secondary neoplasm), billed with
                # the cancer: the note, the problem lists and the claim all agree.
                claim = _claims_registration(world, persons[person_id], claims)
                claim.tumors.extend(replace(t, stage=None) for t in coded)
                held[person_id][claims.name] = claim
        for registrations in held.values():
            for registration in registrations.values():
                _registered_first(registration)

    def key_section(self, world: World) -> list[dict[str, Any]]:
        return [
            {
                "kind": plant.kind,
                "person_id": plant.person_id,
                "sources": list(plant.sources),
                "expect": [e.as_json() for e in plant.expect],
            }
            for plant in self.plants
        ] + [{"kind": CONTROL, "person_id": person_id, "expect": []} for person_id in self.controls]


def _claims_source(world: World) -> SourceSpec | None:
    """The set's claims source (the first, if several), which holds only the persons planted
    kinds register with it."""
    return next((s for s in world.config.sources if s.format == CLAIMS), None)


def _claims_registration(world: World, person: Person, source: SourceSpec) -> Registration:
    """The person as the claims source holds them: a member id, the true demographics and the
    shared identifier (as every registration of the cohort), and nothing billed yet."""
    rng = world.rng(f"conflicts:claims:{person.person_id}")
    registration = Registration(
        source=source,
        person_id=person.person_id,
        mrn=world.new_mrn(source, rng),
        patient_id=world.new_patient_id(source, rng),
        number=1,
        demographics=person.demographics,
        registered=world.config.as_of,  # moved before its first claim (_registered_first)
        shared_id=True,
    )
    world.registrations.append(registration)
    person.sources.append(source.name)
    return registration


def _feasible(kind: str, fhir_sources: int) -> bool:
    if kind in _ONE_SOURCE or kind in _TEXT:
        return fhir_sources >= 1
    return fhir_sources >= 2 if kind in _FHIR_ONLY else True


def _fits_text(person: Person, as_of: datetime) -> bool:
    """A person a cancer note can be written about: an adult of a known sex."""
    age_days = (as_of.date() - person.demographics.birth_date).days
    return age_days >= _TEXT_MIN_AGE * 366 and person.demographics.sex is not None


def _hold_everything(registration: Registration, person: Person) -> None:
    registration.demographics = person.demographics
    registration.variations = []
    registration.shared_id = True
    registration.draws = list(person.draws)
    registration.conditions = list(person.conditions)
    registration.allergies = list(person.allergies)


def _registered_first(registration: Registration) -> None:
    """A source registers a patient before it files anything about them."""
    times = [d.taken for d in registration.draws]
    times += [m.asserted for m in registration.medications]
    times += [t.asserted for t in registration.tumors]
    times += [m.taken for m in registration.markers]
    times += [d.written for d in registration.documents]
    if times:
        registration.registered = min(registration.registered, min(times) - timedelta(days=1))


def _plant(
    plant: Plant,
    person: Person,
    registrations: dict[str, Registration],
    world: World,
    rng: random.Random,
) -> None:
    fhir = [name for name, r in registrations.items() if r.source.format == "fhir"]
    claimed = [name for name, r in registrations.items() if r.source.format == CLAIMS]
    if plant.kind in _CLAIMED:
        # The note's source (an EHR, FHIR or HL7 v2) first, then the claims source.
        ehrs = sorted(set(registrations) - set(claimed))
        names: tuple[str, ...] = (rng.choice(ehrs), claimed[0])
    elif plant.kind in _TEXT:
        # The document's source first, then the coded one's.
        coded = rng.choice(sorted(fhir))
        names = (rng.choice(sorted(set(registrations) - {coded} - set(claimed))), coded)
    else:
        pool = fhir if plant.kind in _FHIR_ONLY else list(registrations)
        count = 1 if plant.kind in _ONE_SOURCE else 2
        names = tuple(rng.sample(sorted(pool), count))
    plant.sources = names
    regs = [registrations[name] for name in names]
    as_of = world.config.as_of
    plant.expect = tuple(_PLANTERS[plant.kind](person, regs, as_of, rng))


def _recent(as_of: datetime, rng: random.Random, low: int = 5, high: int = 40) -> datetime:
    return as_of - timedelta(days=rng.randrange(low, high), minutes=rng.randrange(24 * 60))


def _conflict(kind: str, attribute: str) -> Expected:
    return Expected(kind, attribute)


def _stale(
    attribute: str, attribute_class: AttributeClass, source: str, since: datetime, kind: str
) -> Expected:
    rule = DEFAULT_POLICY.rule(attribute, attribute_class)
    window = None
    if rule is not None:
        window = rule.reconfirm_within if kind == STALE_RECONFIRM else rule.max_age
    if window is None:
        raise ValueError(f"the built-in policy makes no {attribute} stale ({kind})")
    return Expected(kind, attribute, source, since + window)


# --- the plants: each edits the registrations and returns what the stack must raise ----------


def _birth_date(
    person: Person, regs: list[Registration], as_of: datetime, rng: random.Random
) -> list[Expected]:
    b = regs[1]
    true = person.demographics.birth_date
    shift = timedelta(days=rng.randrange(1, 400) * rng.choice((-1, 1)))
    sent = true + shift if true + shift < as_of.date() else true - abs(shift)
    b.demographics = replace(b.demographics, birth_date=sent)
    b.variations.append(variations.PLANTED_BIRTH_DATE)
    return [_conflict(BIRTH_DATE, "Patient.birthDate")]


def _sex(
    person: Person, regs: list[Registration], as_of: datetime, rng: random.Random
) -> list[Expected]:
    b = regs[1]
    sent: Sex = "female" if person.demographics.sex == "male" else "male"
    b.demographics = replace(b.demographics, sex=sent)
    b.variations.append(variations.PLANTED_SEX)
    return [_conflict(SEX, "Patient.gender")]


def _name(
    person: Person, regs: list[Registration], as_of: datetime, rng: random.Random
) -> list[Expected]:
    b = regs[1]
    family = rng.choice([s for s in _SURNAMES if s != person.demographics.family])
    b.demographics = replace(b.demographics, family=family)
    b.variations.append(variations.PLANTED_NAME)
    return [_conflict(NAME, "Patient.name")]


def _allergy_status(
    person: Person, regs: list[Registration], as_of: datetime, rng: random.Random
) -> list[Expected]:
    a, b = regs
    if person.allergies:
        allergy = rng.choice(person.allergies)
    else:
        recorded = (as_of - timedelta(days=rng.randrange(60, 2000))).date()
        allergy = AllergyFact(rng.choice(SUBSTANCES), "low", rng.choice(REACTIONS), recorded)
        a.allergies.append(allergy)
        b.allergies.append(allergy)
    statuses: tuple[AllergyStatus, ...] = ("inactive", "refuted", "entered-in-error")
    status = rng.choice(statuses)
    b.allergies = [replace(x, status=status) if x == allergy else x for x in b.allergies]
    return [_conflict(ALLERGY_STATUS, f"AllergyIntolerance/{allergy.substance.code}")]


def _medication_status(
    person: Person, regs: list[Registration], as_of: datetime, rng: random.Random
) -> list[Expected]:
    a, b = regs
    drug = rng.choice(DRUGS)
    dose = rng.choice(drug.doses_mg)
    active = MedicationFact(drug, "active", dose, _recent(as_of, rng))
    a.medications.append(active)
    b.medications.append(MedicationFact(drug, "stopped", dose, _recent(as_of, rng)))
    attribute = f"Medication/{drug.rxnorm}"
    return [
        _conflict(MEDICATION_STATUS, attribute),
        _stale(attribute, "MEDICATION", a.source.name, active.asserted, STALE_RECONFIRM),
    ]


def _medication_dose(
    person: Person, regs: list[Registration], as_of: datetime, rng: random.Random
) -> list[Expected]:
    drug = rng.choice(DRUGS)
    doses = rng.sample(drug.doses_mg, 2)
    attribute = f"Medication/{drug.rxnorm}"
    expected = [_conflict(MEDICATION_DOSE, f"{attribute}/dose")]
    for registration, dose in zip(regs, doses, strict=True):
        statement = MedicationFact(drug, "active", dose, _recent(as_of, rng))
        registration.medications.append(statement)
        expected.append(
            _stale(
                attribute,
                "MEDICATION",
                registration.source.name,
                statement.asserted,
                STALE_RECONFIRM,
            )
        )
    return expected


def _condition_status(
    person: Person, regs: list[Registration], as_of: datetime, rng: random.Random
) -> list[Expected]:
    a, b = regs
    held = {c.concept for c in person.conditions}
    concept = rng.choice([c for c in CONDITIONS if c not in held])
    onset = (as_of - timedelta(days=rng.randrange(400, 3000))).date()
    abated = (as_of - timedelta(days=rng.randrange(30, 300))).date()
    a.conditions.append(ConditionFact(concept, onset))
    b.conditions.append(ConditionFact(concept, onset, "resolved", abated))
    # Each source codes it its own way (SNOMED CT or ICD-10-CM): Concord keys both by
    # ICD-10-CM through the snomed-icd10cm-conditions crosswalk.
    return [_conflict(CONDITION_STATUS, f"Condition/{concept.icd10}")]


def _lab_value(
    person: Person, regs: list[Registration], as_of: datetime, rng: random.Random
) -> list[Expected]:
    b = regs[1]
    # The latest draw: an older one's results are superseded by the next draw of its panel.
    draw = max(person.draws, key=lambda d: d.taken)
    result = rng.choice(draw.results)
    decimals = result.test.conventional.decimals
    changed = LabResult(result.test, round(result.value * 1.25, decimals))
    varied = replace(draw, results=tuple(changed if r == result else r for r in draw.results))
    b.draws = [varied if d == draw else d for d in b.draws]
    return [_conflict(LAB_VALUE, f"Observation/{result.test.conventional.loinc}")]


def _stale_max_age(
    person: Person, regs: list[Registration], as_of: datetime, rng: random.Random
) -> list[Expected]:
    a, b = regs
    panels = sorted({t.panel for t in LAB_TESTS} - {d.results[0].test.panel for d in person.draws})
    panel = rng.choice(panels)
    tests = [t for t in LAB_TESTS if t.panel == panel]
    old_results = tuple(LabResult(t, round(t.mean, t.conventional.decimals)) for t in tests)
    new_results = tuple(
        LabResult(r.test, round(r.value * 1.3, r.test.conventional.decimals)) for r in old_results
    )
    old = LabDraw(f"{rng.randrange(10**16):016d}", _recent(as_of, rng, 400, 700), old_results)
    new = LabDraw(f"{rng.randrange(10**16):016d}", _recent(as_of, rng, 10, 90), new_results)
    a.draws.append(old)
    b.draws.append(new)
    return [
        _stale(
            f"Observation/{t.conventional.loinc}",
            "LABORATORY",
            a.source.name,
            old.taken,
            STALE_MAX_AGE,
        )
        for t in tests
    ]


def _stale_reconfirm(
    person: Person, regs: list[Registration], as_of: datetime, rng: random.Random
) -> list[Expected]:
    (a,) = regs
    drug = rng.choice(DRUGS)
    statement = MedicationFact(drug, "active", drug.doses_mg[0], _recent(as_of, rng, 120, 400))
    a.medications.append(statement)
    attribute = f"Medication/{drug.rxnorm}"
    return [_stale(attribute, "MEDICATION", a.source.name, statement.asserted, STALE_RECONFIRM)]


def _oncology_metastatic(
    person: Person, regs: list[Registration], as_of: datetime, rng: random.Random
) -> list[Expected]:
    a, b = regs
    cancer = rng.choice(CANCERS)
    spread = rng.choice(METASTASES)
    stage = STAGES[rng.randrange(1, 4)]
    a.tumors.append(TumorFact(cancer.icd10, cancer.display, stage, _recent(as_of, rng)))
    b.tumors.append(TumorFact(spread.icd10, spread.display, None, _recent(as_of, rng)))
    return [_conflict(ONCOLOGY_METASTATIC, "Oncology.metastatic")]


def _oncology_stage(
    person: Person, regs: list[Registration], as_of: datetime, rng: random.Random
) -> list[Expected]:
    cancer = rng.choice(CANCERS)
    stages = rng.sample([STAGES[1], STAGES[2], STAGES[3]], 2)
    for registration, stage in zip(regs, stages, strict=True):
        tumor = TumorFact(cancer.icd10, cancer.display, stage, _recent(as_of, rng))
        registration.tumors.append(tumor)
    return [
        _conflict(ONCOLOGY_STAGE, f"Condition/{cancer.icd10}/stage"),
        _conflict(ONCOLOGY_STAGE, "Oncology.stageGroup"),
    ]


def _oncology_biomarker(
    person: Person, regs: list[Registration], as_of: datetime, rng: random.Random
) -> list[Expected]:
    marker = rng.choice(BIOMARKERS)
    taken = _recent(as_of, rng, 20, 200)
    results = rng.sample([marker.positive, marker.negative], 2)
    for registration, result in zip(regs, results, strict=True):
        registration.markers.append(MarkerResult(marker.loinc, marker.display, result, taken))
    return [
        _conflict(ONCOLOGY_BIOMARKER, f"Observation/{marker.loinc}"),
        _conflict(ONCOLOGY_BIOMARKER, f"Oncology.biomarker/{marker.name}"),
    ]


def _oncology_primary(
    person: Person, regs: list[Registration], as_of: datetime, rng: random.Random
) -> list[Expected]:
    cancers = rng.sample(CANCERS, 2)
    for registration, cancer in zip(regs, cancers, strict=True):
        tumor = TumorFact(cancer.icd10, cancer.display, None, _recent(as_of, rng))
        registration.tumors.append(tumor)
    return [_conflict(ONCOLOGY_PRIMARY, "Oncology.primarySite")]


def _cancers_for(person: Person) -> list[Cancer]:
    """The planted cancers this person can have (breast for women, prostate for men)."""
    barred = "C61" if person.demographics.sex == "female" else "C50"
    return [c for c in CANCERS if not c.icd10.startswith(barred)]


def _oncology_note(
    person: Person, regs: list[Registration], as_of: datetime, rng: random.Random
) -> list[Expected]:
    """The note at an EHR says one thing, the payer's claim line codes the other. A claim
    carries no stage, so it can only say metastatic (a C78/C79 secondary neoplasm), not that
    the cancer is not: the note says there is no metastatic disease."""
    note_source, claims = regs
    written = _recent(as_of, rng)
    billed = _recent(as_of, rng)
    if person.demographics.sex == "female" and rng.random() < 0.5:
        # The note reads the receptor status from pathology; the claim bills the breast cancer
        # with the opposite (Z17.0 ER positive, Z17.1 negative) as a secondary diagnosis.
        cancer = CANCERS[0]  # breast
        said = rng.choice(("positive", "negative"))
        coded = RECEPTOR_STATUS["negative" if said == "positive" else "positive"]
        note_source.documents.append(progress_note(rng, person, cancer.icd10, written, er=said))
        claims.tumors.append(TumorFact(cancer.icd10, cancer.display, None, billed))
        claims.tumors.append(TumorFact(coded.icd10, coded.display, None, billed))
        return [_conflict(ONCOLOGY_NOTE, "Oncology.biomarker/ER")]
    # "No evidence of metastatic disease" in the note; the primary cancer and a secondary
    # neoplasm of a site it spreads to on the claim.
    cancer = rng.choice(_cancers_for(person))
    spread = rng.choice([m for m in METASTASES if m.icd10 in sites_for(cancer.icd10)])
    note = progress_note(rng, person, cancer.icd10, written, metastatic="false")
    note_source.documents.append(note)
    claims.tumors.append(TumorFact(cancer.icd10, cancer.display, None, billed))
    claims.tumors.append(TumorFact(spread.icd10, spread.display, None, billed))
    return [_conflict(ONCOLOGY_NOTE, "Oncology.metastatic")]


def _oncology_pathology(
    person: Person, regs: list[Registration], as_of: datetime, rng: random.Random
) -> list[Expected]:
    a, b = regs
    cancer = rng.choice(_cancers_for(person))
    reported, listed = rng.sample(stage_groups(cancer.icd10), 2)
    written = _recent(as_of, rng, 30, 200)
    a.documents.append(pathology_report(rng, person, cancer.icd10, reported, written))
    stage = STAGES[int(listed)]
    b.tumors.append(TumorFact(cancer.icd10, cancer.display, stage, _recent(as_of, rng)))
    return [_conflict(ONCOLOGY_PATHOLOGY, "Oncology.stageGroup")]


def _agreeing_text(
    person: Person, registrations: dict[str, Registration], as_of: datetime, rng: random.Random
) -> list[TumorFact]:
    """Two controls in three that fit get a cancer, coded at each FHIR source of theirs, and
    at one source a note or pathology report that says the same of it. Returns the codes."""
    fhir = [r for _, r in sorted(registrations.items()) if r.source.format == "fhir"]
    if not fhir or not _fits_text(person, as_of) or rng.random() >= 2 / 3:
        return []
    flavours = ["metastatic", "stage"] + (["er"] if person.demographics.sex == "female" else [])
    flavour = rng.choice(flavours)
    cancer = CANCERS[0] if flavour == "er" else rng.choice(_cancers_for(person))
    asserted = _recent(as_of, rng)
    written = _recent(as_of, rng)
    coded: list[TumorFact] = []
    document: NoteFact
    if flavour == "er":
        status = rng.choice(("positive", "negative"))
        receptor = RECEPTOR_STATUS[status]
        coded = [
            TumorFact(cancer.icd10, cancer.display, None, asserted),
            TumorFact(receptor.icd10, receptor.display, None, asserted),
        ]
        document = progress_note(rng, person, cancer.icd10, written, er=status)
    elif flavour == "metastatic" and rng.random() < 0.5:
        spread = rng.choice([m for m in METASTASES if m.icd10 in sites_for(cancer.icd10)])
        coded = [
            TumorFact(cancer.icd10, cancer.display, None, asserted),
            TumorFact(spread.icd10, spread.display, None, asserted),
        ]
        document = progress_note(
            rng, person, cancer.icd10, written, metastatic="true", site=spread.icd10
        )
    elif flavour == "metastatic":
        stage = STAGES[int(rng.choice(stage_groups(cancer.icd10)))]
        coded = [TumorFact(cancer.icd10, cancer.display, stage, asserted)]
        document = progress_note(rng, person, cancer.icd10, written, metastatic="false")
    else:
        group = rng.choice(stage_groups(cancer.icd10))
        coded = [TumorFact(cancer.icd10, cancer.display, STAGES[int(group)], asserted)]
        document = pathology_report(rng, person, cancer.icd10, group, written)
    for registration in fhir:
        registration.tumors.extend(coded)
    rng.choice([r for _, r in sorted(registrations.items())]).documents.append(document)
    return coded


_PLANTERS = {
    BIRTH_DATE: _birth_date,
    SEX: _sex,
    NAME: _name,
    ALLERGY_STATUS: _allergy_status,
    MEDICATION_STATUS: _medication_status,
    MEDICATION_DOSE: _medication_dose,
    CONDITION_STATUS: _condition_status,
    LAB_VALUE: _lab_value,
    ONCOLOGY_METASTATIC: _oncology_metastatic,
    ONCOLOGY_STAGE: _oncology_stage,
    ONCOLOGY_BIOMARKER: _oncology_biomarker,
    ONCOLOGY_PRIMARY: _oncology_primary,
    ONCOLOGY_NOTE: _oncology_note,
    ONCOLOGY_PATHOLOGY: _oncology_pathology,
    STALE_MAX_AGE: _stale_max_age,
    STALE_RECONFIRM: _stale_reconfirm,
}
