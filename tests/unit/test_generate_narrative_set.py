"""The generator's hard-case narrative documents (issue 18, generate/narrative_set.py): only on
persons outside the conflicts cohort and with no other oncology, each named in the answer key
by the record ingestion makes of it, read back from the rendered record as written, and the
same for a seed."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from builders import published_events
from concord.cli import main
from concord.clinical_text.documents import fhir_documents, hl7_documents
from concord.events.models import IngestedRecord
from concord.generate import GeneratedSet, GeneratorConfig, generate
from concord.generate.generator import default_scenarios, plan
from concord.generate.narrative_set import NarrativeSet
from concord.generate.narratives import NarrativeDocument, narrative_documents
from concord.generate.planted import PlantedConflicts
from concord.hl7v2 import er7
from concord.ingestion.fhir import ingest_fhir
from concord.ingestion.hl7v2 import ingest_hl7v2

SEED = 42
PATIENTS = 300
RECEIVED = datetime(2026, 1, 2, tzinfo=UTC)


@cache
def _generated(seed: int = SEED, narratives: int | None = None) -> GeneratedSet:
    return generate(GeneratorConfig(patients=PATIENTS, seed=seed, narratives=narratives))


def _corpus(count: int) -> list[NarrativeDocument]:
    """The scenario's documents, as it draws them (its own stream of the seed)."""
    return narrative_documents(random.Random(f"{SEED}:narratives:documents"), count)


def _lines(text: str) -> list[str]:
    return [line for line in text.split("\n") if line.strip()]


def _section(generated: GeneratedSet) -> list[dict[str, Any]]:
    section: list[dict[str, Any]] = generated.answer_key["scenarios"]["narratives"]
    return section


def test_a_fifth_of_the_patients_get_one_document_each_outside_the_cohort() -> None:
    key = _generated().answer_key
    section = _section(_generated())
    assert len(section) == PATIENTS // 5
    assert key["config"]["narratives"] == PATIENTS // 5
    cohort = {entry["person_id"] for entry in key["scenarios"]["conflicts"]}
    persons = [entry["person_id"] for entry in section]
    assert len(set(persons)) == len(persons)
    assert not set(persons) & cohort
    related = {p["person_id"] for p in key["persons"] if p["related"]}
    assert not set(persons) & related
    # Persons one source holds come first: at 300 patients, most of the documents.
    held_by = {p["person_id"]: len(p["sources"]) for p in key["persons"]}
    assert Counter(held_by[p] for p in persons)[1] >= len(persons) * 3 // 4
    # Every format and kind, with hard cases.
    assert {e["resource_type"] for e in section} == {
        "DocumentReference",
        "DiagnosticReport",
        "MDM^T02",
        "ORU^R01",
    }
    traps = Counter(t["assertion"] for e in section for t in e["traps"])
    assert {"negated", "historical", "family"} <= set(traps)


def test_their_persons_hold_no_other_oncology_and_no_other_document() -> None:
    scenarios = default_scenarios()
    world = plan(GeneratorConfig(patients=PATIENTS, seed=SEED), scenarios)
    (narrative,) = [s for s in scenarios if isinstance(s, NarrativeSet)]
    (planted,) = [s for s in scenarios if isinstance(s, PlantedConflicts)]
    assert narrative.placed
    chosen = {p.registration.person_id for p in narrative.placed}
    for registration in world.registrations:
        if registration.person_id not in chosen:
            continue
        assert not registration.tumors and not registration.markers
        assert all(d.document_id is not None for d in registration.documents)
        # Registered before the document was written.
        assert all(registration.registered < d.written for d in registration.documents)
    held = Counter(
        registration.person_id
        for registration in world.registrations
        for _ in registration.documents
        if registration.person_id in chosen
    )
    assert set(held.values()) == {1}
    # The planted cohort's documents are the planted ones only.
    cohort = {p.person_id for p in planted.plants} | set(planted.controls)
    assert not chosen & cohort


def test_the_documents_leave_the_planted_conflicts_as_they_were() -> None:
    with_documents = _generated().answer_key["scenarios"]["conflicts"]
    without = _generated(narratives=0)
    assert without.answer_key["scenarios"]["conflicts"] == with_documents
    assert without.answer_key["scenarios"]["narratives"] == []


def test_a_seed_gives_the_same_documents_and_another_seed_others() -> None:
    again = generate(GeneratorConfig(patients=PATIENTS, seed=SEED))
    assert _section(again) == _section(_generated())
    assert again.files == _generated().files
    assert _section(_generated(seed=7)) != _section(_generated())


def test_the_documents_are_the_narrative_generators_for_the_same_stream() -> None:
    """The corpus is narrative_documents' own (evaluate-text's), drawn from the scenario's
    stream: asking for fewer gives the first ones of the same documents."""
    fewer = [e["document_id"] for e in _section(_generated(narratives=10))]
    assert fewer == [e["document_id"] for e in _section(_generated())[:10]]
    assert fewer == [d.document_id for d in _corpus(10)]


def test_more_documents_than_persons_who_can_take_one_are_capped() -> None:
    generated = generate(GeneratorConfig(patients=40, seed=SEED, narratives=1000))
    key = generated.answer_key
    section = _section(generated)
    cohort = {e["person_id"] for e in key["scenarios"]["conflicts"]}
    assert 0 < len(section) < 40
    assert not {e["person_id"] for e in section} & cohort


def _ingest(source: dict[str, Any], folder: Path) -> list[IngestedRecord]:
    records: list[IngestedRecord] = []
    for raw in published_events(folder / source["file"], source["name"], RECEIVED):
        ingest = ingest_fhir if source["format"] == "fhir" else ingest_hl7v2
        result = ingest(raw, max_payload_bytes=1_000_000)
        assert isinstance(result, list), result
        records.extend(result)
    return records


def test_each_key_entry_is_a_record_ingestion_reads_back_with_the_documents_text(
    tmp_path: Path,
) -> None:
    generated = _generated()
    for name, content in generated.files.items():
        (tmp_path / name).write_bytes(content)
    key = generated.answer_key
    section = _section(generated)
    records = {(r["source"], r["record_ref"]): r for r in key["records"]}
    texts = {d.document_id: d.text for d in _corpus(len(section))}
    by_source: dict[str, list[dict[str, Any]]] = {}
    for entry in section:
        record = records[(entry["source"], entry["record_ref"])]
        assert record["person_id"] == entry["person_id"]
        assert record["resource_type"] == entry["resource_type"]
        assert record["patient_key"] == entry["patient_key"]
        assert record["record_id"] == entry["document_id"]
        by_source.setdefault(entry["source"], []).append(entry)
    for source in key["sources"]:
        entries = by_source.get(source["name"])
        if not entries:
            continue
        ingested = {r.provenance.source_record_id: r for r in _ingest(source, tmp_path)}
        for entry in entries:
            record = ingested[entry["record_ref"]]
            if source["format"] == "fhir":
                read = [d.text for d in fhir_documents(orjson.loads(record.payload))]
            else:
                read = [d.text for d in hl7_documents(er7.parse(record.payload.decode()))]
            # A note sent as HTML comes back with its paragraphs' blank lines gone.
            assert read and _lines(read[0]) == _lines(texts[entry["document_id"]]), entry


def test_generate_takes_the_number_of_narratives_and_pysynthea_refuses_it(
    tmp_path: Path,
) -> None:
    result = CliRunner().invoke(
        main,
        ["generate", "--patients", "30", "--narratives", "2", "--out", str(tmp_path)],
    )
    assert result.exit_code == 0, result.output
    assert "narrative documents (scenarios.narratives): 2" in result.output
    refused = CliRunner().invoke(
        main,
        ["generate", "--engine", "pysynthea", "--narratives", "2", "--out", str(tmp_path)],
    )
    assert refused.exit_code == 2 and "--narratives" in refused.output


@pytest.mark.parametrize("narratives", [-1])
def test_a_negative_number_is_refused(narratives: int) -> None:
    with pytest.raises(ValueError, match="narratives"):
        GeneratorConfig(narratives=narratives)
