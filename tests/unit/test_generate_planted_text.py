"""Planted text-versus-coded disagreements (issue 18): the document's text, read back by the
narrative worker's reader, says what the answer key says it does, and the other source's
coded data (through the built-in policy's derived attributes) says the other value: for a
note, a payer's claim line, validated by claims ingestion and normalized as the normalizer
does; for a pathology report, a FHIR problem list. The controls' documents agree with their
coded data and claims."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from functools import cache

import orjson
import pytest

from concord.clinical_text.documents import fhir_documents, hl7_documents
from concord.clinical_text.extract import extract
from concord.conflicts.policy import DEFAULT_POLICY
from concord.events.models import ClinicalFact, IngestedRecord
from concord.events.raw import RawEvent
from concord.generate import GeneratorConfig, generate, planted
from concord.generate.config import CLAIMS
from concord.generate.generator import default_scenarios, plan
from concord.generate.model import NoteFact, Registration, TumorFact, World
from concord.generate.render import SourceWriter
from concord.hl7v2 import er7
from concord.ingestion.claims import ingest_claim
from concord.normalization.facts.claims import claim_drafts
from concord.normalization.terminology import Terminology

SEED = 42
TEXT_KINDS = (planted.ONCOLOGY_NOTE, planted.ONCOLOGY_PATHOLOGY)
MIN_CONFIDENCE = DEFAULT_POLICY.text.min_confidence


@pytest.fixture(scope="module")
def planned() -> tuple[World, planted.PlantedConflicts]:
    scenarios = default_scenarios()
    world = plan(GeneratorConfig(patients=300, seed=SEED), scenarios)
    (conflicts,) = [s for s in scenarios if isinstance(s, planted.PlantedConflicts)]
    return world, conflicts


def _registrations(world: World, person_id: str) -> dict[str, Registration]:
    return {r.source.name: r for r in world.registrations if r.person_id == person_id}


def _read(text: str) -> dict[str, str]:
    """The facts the narrative worker would publish from a text (at or above the threshold)."""
    return {f.attribute: f.value for f in extract(text) if f.confidence >= MIN_CONFIDENCE}


def _coded(tumors: Iterable[TumorFact]) -> dict[str, set[str]]:
    """What the built-in policy derives from a source's coded cancers, per attribute."""
    facts = []
    for tumor in tumors:
        facts.append((f"Condition/{tumor.icd10}", "active"))
        if tumor.stage is not None:
            facts.append(
                (f"Condition/{tumor.icd10}/stage", f"http://snomed.info/sct|{tumor.stage}")
            )
    return _implied(facts)


@cache
def _terminology() -> Terminology:
    return Terminology.load()


def _claim_lines(
    world: World, registration: Registration, writer: SourceWriter | None = None
) -> list[IngestedRecord]:
    """The registration's claim lines as the payer sends them, through claims ingestion."""
    writer = writer or SourceWriter(registration.source, SEED)
    ingested = []
    for offset, line in enumerate(writer.render(registration, world.config.shared_id_system)):
        raw = RawEvent(
            "ehr.raw.claims",
            0,
            offset,
            None,
            line.text.encode(),
            (("source", registration.source.name.encode()),),
            datetime(2026, 1, 2, tzinfo=UTC),
        )
        outcome = ingest_claim(raw, max_payload_bytes=1_000_000)
        assert isinstance(outcome, list), outcome
        (record,) = outcome
        assert record.provenance.source_record_id == line.record_ref
        ingested.append(record)
    return ingested


def _claimed(world: World, registration: Registration) -> dict[str, set[str]]:
    """What the built-in policy derives from the facts the normalizer makes of the
    registration's claim lines, per attribute."""
    facts = []
    for record in _claim_lines(world, registration):
        for draft in claim_drafts(orjson.loads(record.payload), _terminology()):
            assert draft.value is not None
            facts.append((draft.attribute, draft.value))
    assert facts
    return _implied(facts)


def _implied(facts: Iterable[tuple[str, str]]) -> dict[str, set[str]]:
    """What the built-in policy derives from (attribute, value) facts, per attribute."""
    implied: dict[str, set[str]] = {}
    for attribute, value in facts:
        fact = ClinicalFact.model_construct(attribute=attribute, value=value)
        decided: set[str] = set()  # as derive(): the first derivation of an attribute decides
        for derivation in DEFAULT_POLICY.derived:
            if derivation.attribute in decided:
                continue
            said = derivation.implied(fact)
            if said is not None:
                decided.add(derivation.attribute)
                implied.setdefault(derivation.attribute, set()).add(said)
    return implied


def test_both_text_kinds_are_planted_for_the_seed(
    planned: tuple[World, planted.PlantedConflicts],
) -> None:
    _, conflicts = planned
    kinds = [p.kind for p in conflicts.plants]
    for kind in TEXT_KINDS:
        assert kind in planted.KINDS
        assert kinds.count(kind) >= 2, kind


def test_the_document_says_the_planted_value_and_the_coded_side_the_other(
    planned: tuple[World, planted.PlantedConflicts],
) -> None:
    world, conflicts = planned
    checked = 0
    claimed: dict[str, int] = {"Oncology.biomarker/ER": 0, "Oncology.metastatic": 0}
    for plant in conflicts.plants:
        if plant.kind not in TEXT_KINDS:
            continue
        regs = _registrations(world, plant.person_id)
        document_source, coded_source = plant.sources
        (document,) = regs[document_source].documents
        assert regs[document_source].source.format != CLAIMS
        assert not regs[coded_source].documents
        (expected,) = plant.expect
        attribute = expected.attribute
        stated = dict(document.stated)
        read = _read(document.text)
        # The text says the value the key says, and the reader reads it, confidently.
        assert read.get(attribute) == stated[attribute], (plant, document.text)
        # Nothing read that the text was not written to say.
        assert read.items() <= stated.items(), (plant, document.text)
        # The coded side implies the other value, and only that one: for a note, the claim
        # lines (valid claims, as normalization reads them); for a report, a problem list.
        if plant.kind == planted.ONCOLOGY_NOTE:
            assert regs[coded_source].source.format == CLAIMS
            assert not any(r.tumors for n, r in regs.items() if n != coded_source)
            implied = _claimed(world, regs[coded_source])
            claimed[attribute] += 1
        else:
            assert regs[coded_source].source.format == "fhir"
            implied = _coded(regs[coded_source].tumors)
        assert len(implied.get(attribute, set())) == 1, implied
        assert implied[attribute] != {stated[attribute]}
        # ... and agrees with the text on everything else both say (the primary site).
        for other, values in implied.items():
            if other != attribute and other in read:
                assert values == {read[other]}, (other, values, read[other])
        checked += 1
    assert checked >= 4
    assert all(claimed.values()), claimed  # both attributes, seen in claims


def test_the_claim_lines_say_what_a_payer_bills(
    planned: tuple[World, planted.PlantedConflicts],
) -> None:
    """The cancer is the principal diagnosis, the code billed with it (Z17.x with the breast
    cancer, a C78/C79 secondary with the primary) the next; one claim id per line; service
    before submission before adjudication; and the member is the enterprise id's person."""
    world, _ = planned
    payer = [r for r in world.registrations if r.source.format == CLAIMS]
    assert payer
    claim_ids = set()
    writer = SourceWriter(payer[0].source, SEED)  # one for the source, as generate() has
    for registration in payer:
        (record,) = _claim_lines(world, registration, writer)
        line = orjson.loads(record.payload)
        codes = [d["code"] for d in line["diagnoses"]]
        assert len(codes) == 2 and codes[0][:3] in ("C50", "C34", "C18", "C61"), codes
        assert codes[1][:3] in ("Z17", "C78", "C79")
        assert not codes[1].startswith("Z17") or codes[0].startswith("C50")
        assert line["diagnosis_pointers"] == [1, 2]
        assert line["service_date_from"] < line["submitted_at"] < line["adjudicated_at"]
        assert line["patient"]["identifiers"] == [
            {"system": world.config.shared_id_system, "value": registration.person_id}
        ]
        assert record.provenance.event_time == datetime.fromisoformat(line["adjudicated_at"])
        claim_ids.add(line["claim_id"])
    assert len(claim_ids) == len(payer)


def test_the_planted_document_is_the_only_text_and_its_kind_fits(
    planned: tuple[World, planted.PlantedConflicts],
) -> None:
    world, conflicts = planned
    for plant in conflicts.plants:
        if plant.kind not in TEXT_KINDS:
            continue
        documents = [
            d for r in _registrations(world, plant.person_id).values() for d in r.documents
        ]
        (document,) = documents
        want = "pathology-text" if plant.kind == planted.ONCOLOGY_PATHOLOGY else "note-text"
        assert document.kind == want
        if plant.kind == planted.ONCOLOGY_PATHOLOGY:
            assert "FINAL DIAGNOSIS:" in document.text and "stage" in document.text.lower()


def test_controls_documents_agree_with_every_source_of_theirs(
    planned: tuple[World, planted.PlantedConflicts],
) -> None:
    world, conflicts = planned
    with_text = claims = 0
    for person_id in conflicts.controls:
        regs = _registrations(world, person_id)
        documents = [d for r in regs.values() for d in r.documents]
        if not documents:
            assert not any(r.tumors for r in regs.values())
            continue
        with_text += 1
        (document,) = documents
        read = _read(document.text)
        assert read.items() <= dict(document.stated).items(), document.text
        for registration in regs.values():
            if registration.source.format == CLAIMS:
                # A claim only where it says what the text is about (ER, spread), and agreeing.
                claims += 1
                implied = _claimed(world, registration)
                assert set(implied) & set(read) - {"Oncology.primarySite"}, document.text
                for attribute, values in implied.items():
                    if attribute in read:
                        assert values == {read[attribute]}, (attribute, values, document.text)
                continue
            if registration.source.format != "fhir":
                continue
            implied = _coded(registration.tumors)
            assert implied, "a control with text has its cancer coded at each FHIR source"
            for attribute, values in implied.items():
                if attribute in read:
                    assert values == {read[attribute]}, (attribute, values, document.text)
            # The text says what the coded data is about (a stage, receptor or spread).
            assert set(implied) & set(read) - {"Oncology.primarySite"}, document.text
    assert with_text >= 5
    assert claims >= 2


def _texts_of(rendered_text: str, fmt: str) -> list[str]:
    if fmt == "fhir":
        return [d.text for d in fhir_documents(orjson.loads(rendered_text))]
    return [d.text for d in hl7_documents(er7.parse(rendered_text))]


def test_rendered_documents_name_the_patient_and_read_back_as_written(
    planned: tuple[World, planted.PlantedConflicts],
) -> None:
    world, conflicts = planned
    cohort = {p.person_id for p in conflicts.plants} | set(conflicts.controls)
    seen: set[str] = set()
    for registration in world.registrations:
        # The hard-case narrative documents of persons outside the cohort have tests of their
        # own (test_generate_narrative_set.py).
        if not registration.documents or registration.person_id not in cohort:
            continue
        writer = SourceWriter(registration.source, SEED)
        records = writer.render(registration, world.config.shared_id_system)
        assert records[0].resource_type in ("Patient", "ADT^A04")
        texts = [
            r
            for r in records
            if r.resource_type in ("DocumentReference", "DiagnosticReport", "MDM^T02")
            or (r.resource_type == "ORU^R01" and "|TX|" in r.text)
        ]
        assert len(texts) == len(registration.documents)
        for record, document in zip(texts, registration.documents, strict=True):
            seen.add(record.resource_type)
            if registration.source.format == "fhir":
                resource = orjson.loads(record.text)
                assert resource["subject"] == {"reference": f"Patient/{registration.patient_id}"}
                assert resource["meta"]["versionId"] == "1"
            else:
                pid = er7.parse(record.text).first("PID")
                assert pid is not None and registration.mrn in pid.raw(3)
            parts = _texts_of(record.text, registration.source.format)
            assert parts[0] == document.text
            for part in parts:
                assert _read(part).items() <= dict(document.stated).items()
    assert seen >= {"DocumentReference", "DiagnosticReport", "ORU^R01"}


def test_the_answer_key_ties_each_document_record_to_its_person() -> None:
    generated = generate(GeneratorConfig(patients=300, seed=SEED))
    key = generated.answer_key
    documents = [
        r
        for r in key["records"]
        if r["resource_type"] in ("DocumentReference", "DiagnosticReport", "MDM^T02")
    ]
    assert documents
    cohort = {e["person_id"] for e in key["scenarios"]["conflicts"]}
    # Outside the cohort, only the hard-case narrative documents (scenarios.narratives).
    narratives = {(e["source"], e["record_ref"]) for e in key["scenarios"]["narratives"]}
    for record in documents:
        if (record["source"], record["record_ref"]) not in narratives:
            assert record["person_id"] in cohort
        assert record["record_ref"].startswith(record["resource_type"] + "/")
    assert narratives <= {(r["source"], r["record_ref"]) for r in key["records"]}


def test_notes_are_the_same_for_a_seed() -> None:
    def texts() -> list[NoteFact]:
        world = plan(GeneratorConfig(patients=300, seed=SEED), default_scenarios())
        return [d for r in world.registrations for d in r.documents]

    assert texts() == texts()
