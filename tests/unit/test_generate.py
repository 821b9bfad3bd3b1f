"""`concord generate`: deterministic, valid for ingestion, and its answer key tells the truth.

The answer key is checked against the files themselves: every record the files hold (as
ingestion reads them) is in the key, and each variation the key names is visible in the
record, so an evaluation built on the key measures the matcher and not the generator."""

from __future__ import annotations

import random
import unicodedata
from collections import Counter, defaultdict
from datetime import UTC, date, datetime, timedelta
from itertools import combinations
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from builders import published_events
from concord.cli import main
from concord.config import DEFAULT_ENTERPRISE_ID_SYSTEM
from concord.events.models import IngestedRecord
from concord.generate import (
    GeneratedSet,
    GeneratorConfig,
    catalogue,
    generate,
    parse_sources,
    planted,
    variations,
    write,
)
from concord.generate.config import CLAIMS, DEFAULT_AS_OF
from concord.generate.generator import default_scenarios
from concord.generate.model import World
from concord.generate.scenarios import Scenario
from concord.hl7v2 import er7
from concord.ingestion.claims import ingest_claim
from concord.ingestion.codes import ICD10_CM, LOINC, RXNORM, SNOMED_CT, check_coding
from concord.ingestion.fhir import ingest_fhir
from concord.ingestion.hl7v2 import ingest_hl7v2
from concord.publishing import read_file

RECEIVED = datetime(2026, 1, 2, tzinfo=UTC)


@pytest.fixture(scope="module")
def population() -> GeneratedSet:
    return generate(GeneratorConfig(patients=300))


@pytest.fixture(scope="module")
def files(population: GeneratedSet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("generated")
    write(population, out)
    return out


@pytest.fixture(scope="module")
def ingested(population: GeneratedSet, files: Path) -> dict[str, list[IngestedRecord]]:
    """Every file read as `concord publish` reads it and run through ingestion's pure core."""
    outcome: dict[str, list[IngestedRecord]] = {}
    rejected: Counter[tuple[str, str, str | None]] = Counter()
    for source in population.answer_key["sources"]:
        records: list[IngestedRecord] = []
        for raw in published_events(files / source["file"], source["name"], RECEIVED):
            if source["format"] == "fhir":
                result = ingest_fhir(raw, max_payload_bytes=1_000_000)
            elif source["format"] == CLAIMS:
                assert raw.topic == "ehr.raw.claims"
                result = ingest_claim(raw, max_payload_bytes=1_000_000)
            else:
                # No source zone configured: every generated timestamp must carry its offset.
                result = ingest_hl7v2(raw, max_payload_bytes=1_000_000)
            if isinstance(result, list):
                records.extend(result)
            else:
                rejected[(result.reason_code, result.reason, result.location)] += 1
        outcome[source["name"]] = records
    assert not rejected, rejected.most_common(5)
    return outcome


def _key_records(population: GeneratedSet) -> list[dict[str, Any]]:
    return list(population.answer_key["records"])


def _persons(population: GeneratedSet) -> dict[str, dict[str, Any]]:
    return {p["person_id"]: p for p in population.answer_key["persons"]}


def _cohort(population: GeneratedSet) -> set[str]:
    return {entry["person_id"] for entry in population.answer_key["scenarios"]["conflicts"]}


# --- determinism ---------------------------------------------------------------------------


def test_the_same_seed_writes_the_same_bytes_and_another_seed_does_not() -> None:
    first = generate(GeneratorConfig(patients=80, seed=11))
    second = generate(GeneratorConfig(patients=80, seed=11))
    other = generate(GeneratorConfig(patients=80, seed=12))
    assert first.files == second.files
    assert set(first.files) == {
        "hospital-ehr.ndjson",
        "clinic-ehr.ndjson",
        "lab-system.hl7",
        "payer.ndjson",
        "answer_key.json",
    }
    assert first.files["hospital-ehr.ndjson"] != other.files["hospital-ehr.ndjson"]


def test_a_scenario_added_later_changes_nothing_the_others_wrote(population: GeneratedSet) -> None:
    """Issue 5 adds scenarios; they get their own random streams and answer-key sections."""

    class Planted(Scenario):
        name = "planted"

        def shape_registrations(self, world: World) -> None:
            self.drawn = world.rng(self.name).random()

        def key_section(self, world: World) -> list[dict[str, Any]]:
            return [{"drawn": self.drawn}]

    extended = generate(GeneratorConfig(patients=300), scenarios=[*default_scenarios(), Planted()])
    for name, content in population.files.items():
        if name != "answer_key.json":
            assert extended.files[name] == content
    assert extended.answer_key["scenarios"]["planted"] == [{"drawn": pytest.approx(0.0, abs=1)}]
    assert extended.answer_key["records"] == population.answer_key["records"]


# --- valid for ingestion, and the key covers every record ---------------------------------


def test_every_generated_record_is_accepted_by_ingestion_and_in_the_answer_key(
    population: GeneratedSet, ingested: dict[str, list[IngestedRecord]]
) -> None:
    key = Counter((r["source"], r["record_ref"]) for r in _key_records(population))
    seen = Counter(
        (source, record.provenance.source_record_id)
        for source, records in ingested.items()
        for record in records
    )
    assert seen == key
    assert max(key.values()) == 1  # record refs are unique within a source
    types = {record.resource_type for records in ingested.values() for record in records}
    assert types == {
        "Patient",
        "Observation",
        "Condition",
        "AllergyIntolerance",
        "MedicationStatement",  # planted disagreements only
        "DocumentReference",  # narrative documents: the cohort's only
        "DiagnosticReport",
        "ADT^A04",
        "ADT^A08",
        "ORU^R01",
        "MDM^T02",
        "ClaimLine",  # the payer's: claims of the note-versus-claim plants and their controls
    }


def test_every_record_names_the_patient_record_it_belongs_to(
    population: GeneratedSet, ingested: dict[str, list[IngestedRecord]]
) -> None:
    key = population.answer_key
    patients = {p["patient_key"]: p for p in key["patients"]}
    by_ref = {(r["source"], r["record_ref"]): r for r in key["records"]}
    fhir_patients: dict[str, str] = {}  # Patient/<id> -> patient key
    for source, records in ingested.items():
        for record in records:
            entry = by_ref[(source, record.provenance.source_record_id)]
            patient = patients[entry["patient_key"]]
            assert (patient["source"], patient["mrn"], patient["person_id"]) == (
                source,
                entry["mrn"],
                entry["person_id"],
            )
            assert entry["variations"] == patient["variations"]
            payload = record.payload.decode()
            if record.format == "HL7V2":
                pid = er7.parse(record.payload).first("PID")
                assert pid is not None and pid.value(3, 1) == entry["mrn"]
            elif record.format == "CLAIM":
                assert orjson.loads(payload)["patient"]["member_id"] == entry["mrn"]
            elif record.resource_type == "Patient":
                fhir_patients[f"Patient/{orjson.loads(payload)['id']}"] = entry["patient_key"]
                assert entry["mrn"] in payload
    for entry in key["records"]:
        if entry["resource_type"] in ("Observation", "Condition", "AllergyIntolerance"):
            resource = _resource(population, entry)
            reference = (resource.get("subject") or resource["patient"])["reference"]
            assert fhir_patients[reference] == entry["patient_key"]
    counts = Counter(r["patient_key"] for r in key["records"])
    assert all(counts[p] == patients[p]["records"] for p in patients)


_RESOURCES: dict[int, dict[tuple[str, str], dict[str, Any]]] = {}


def _resource(population: GeneratedSet, entry: dict[str, Any]) -> dict[str, Any]:
    index = _RESOURCES.get(id(population))
    if index is None:
        index = {}
        for source in population.answer_key["sources"]:
            if source["format"] == "fhir":
                for line in population.files[source["file"]].splitlines():
                    resource = orjson.loads(line)
                    ref = f"{resource['resourceType']}/{resource['id']}"
                    index[(source["name"], ref)] = resource
        _RESOURCES[id(population)] = index
    return index[(entry["source"], entry["record_ref"])]


def test_the_catalogue_codes_pass_concords_code_checks() -> None:
    codings = []
    for test in catalogue.LAB_TESTS:
        codings += [(LOINC, test.conventional.loinc), (LOINC, test.si.loinc)]
        codings.append((LOINC, test.panel.split("^")[0]))
    for concept in catalogue.CONDITIONS:
        codings += [(SNOMED_CT, concept.snomed), (ICD10_CM, concept.icd10)]
    codings += [(s.system, s.code) for s in catalogue.SUBSTANCES]
    codings += [(SNOMED_CT, r.snomed) for r in catalogue.REACTIONS]
    # Planted disagreements' medications, cancers, stages and tumour markers.
    codings += [(RXNORM, d.rxnorm) for d in catalogue.DRUGS]
    codings += [(ICD10_CM, c.icd10) for c in (*catalogue.CANCERS, *catalogue.METASTASES)]
    codings += [(SNOMED_CT, stage) for stage in catalogue.STAGES.values()]
    for marker in catalogue.BIOMARKERS:
        codings += [
            (LOINC, marker.loinc),
            (SNOMED_CT, marker.positive),
            (SNOMED_CT, marker.negative),
        ]
    for system, code in codings:
        assert check_coding({"system": system, "code": code}) is None, (system, code)
    assert {s.system for s in catalogue.SUBSTANCES} == {RXNORM, SNOMED_CT}


def test_glucose_agrees_across_units(population: GeneratedSet) -> None:
    """A draw reported by a conventional and an SI source is the same number, converted."""
    by_accession: dict[str, dict[str, float]] = defaultdict(dict)
    for entry in _key_records(population):
        if entry["resource_type"] != "Observation":
            continue
        resource = _resource(population, entry)
        coding = resource["code"]["coding"][0]
        if coding["code"] in ("2345-7", "14749-6"):
            quantity = resource["valueQuantity"]
            by_accession[resource["identifier"][0]["value"]][quantity["unit"]] = quantity["value"]
    both = [units for units in by_accession.values() if len(units) == 2]
    assert both
    for units in both:
        assert units["mmol/L"] == pytest.approx(units["mg/dL"] / 18.016, abs=0.051)


# --- the answer key ------------------------------------------------------------------------


def test_every_variation_kind_appears(population: GeneratedSet) -> None:
    counts = population.answer_key["summary"]["variations"]
    assert set(counts) == set(variations.DESCRIPTIONS)
    assert all(counts[kind] > 0 for kind in counts), counts
    seen = Counter(kind for p in population.answer_key["patients"] for kind in p["variations"])
    assert seen == Counter({k: n for k, n in counts.items() if n})


def test_each_variation_is_visible_in_the_record_and_nothing_else_differs(
    population: GeneratedSet,
) -> None:
    persons = _persons(population)
    checked = Counter[str]()
    for entry in _key_records(population):
        if entry["resource_type"] != "Patient":
            continue
        patient = _resource(population, entry)
        truth = persons[entry["person_id"]]["truth"]
        kinds = set(entry["variations"])
        name = patient["name"][0]
        family_differs = name["family"] != truth["family"]
        assert family_differs == bool(kinds & {variations.FAMILY_TYPO, variations.PLANTED_NAME})
        if variations.FAMILY_TYPO in kinds:
            assert _one_edit(name["family"], truth["family"])
        given, true_given = name["given"][0], truth["given"][0]
        assert (given != true_given) == bool(kinds & {variations.GIVEN_TYPO, variations.NICKNAME})
        if variations.GIVEN_TYPO in kinds:
            assert _one_edit(given, true_given)
        if variations.NICKNAME in kinds:
            assert given in catalogue.NICKNAMES[true_given]
        assert name["given"][1:] == truth["given"][1:]
        assert _birth_date_matches(patient["birthDate"], truth["birth_date"], kinds)
        assert ("gender" not in patient) == (variations.MISSING_SEX in kinds)
        if "gender" in patient:
            assert (patient["gender"] != truth["sex"]) == (variations.PLANTED_SEX in kinds)
        assert ("telecom" not in patient) == (variations.MISSING_PHONE in kinds)
        assert ("address" not in patient) == (variations.MISSING_ADDRESS in kinds)
        if "address" in patient:
            moved = patient["address"][0]["postalCode"] != truth["postal_code"]
            assert moved == (variations.MOVED in kinds)
        assert (name.get("suffix") or [None])[0] == (
            None if variations.SUFFIX_DROPPED in kinds else truth["suffix"]
        )
        checked.update(kinds or {"none"})
    assert checked["none"] > 0 and len(checked) > 8


def _birth_date_matches(sent: str, truth: str, kinds: set[str]) -> bool:
    if variations.PLANTED_BIRTH_DATE in kinds:
        return sent != truth
    if variations.BIRTH_DATE_SWAPPED in kinds:
        true_date = date.fromisoformat(truth)
        return sent == date(true_date.year, true_date.day, true_date.month).isoformat()
    if variations.BIRTH_DATE_TYPO in kinds:
        return sum(a != b for a, b in zip(sent, truth, strict=True)) == 1
    return sent == truth


def _one_edit(a: str, b: str) -> bool:
    """Damerau-Levenshtein distance 1 (an adjacent swap counts as one edit)."""
    if a == b:
        return False
    if len(a) == len(b):
        diffs = [i for i in range(len(a)) if a[i] != b[i]]
        if len(diffs) == 1:
            return True
        i, j = diffs[0], diffs[-1]
        return len(diffs) == 2 and j == i + 1 and a[i] == b[j] and a[j] == b[i]
    short, long = sorted((a, b), key=len)
    if len(long) - len(short) != 1:
        return False
    return any(long[:i] + long[i + 1 :] == short for i in range(len(long)))


def test_duplicate_pairs_are_every_pair_of_one_persons_patient_records(
    population: GeneratedSet,
) -> None:
    key = population.answer_key
    by_person: dict[str, list[str]] = defaultdict(list)
    for patient in key["patients"]:
        by_person[patient["person_id"]].append(patient["patient_key"])
    expected = {
        tuple(sorted(pair)) for keys in by_person.values() for pair in combinations(keys, 2)
    }
    pairs = {(p["a"], p["b"]) for p in key["duplicate_pairs"]}
    assert pairs == expected
    scopes = Counter(p["scope"] for p in key["duplicate_pairs"])
    assert scopes["within-source"] > 0 and scopes["cross-source"] > scopes["within-source"]
    for pair in key["duplicate_pairs"]:
        same_source = pair["a"].split("|")[0] == pair["b"].split("|")[0]
        assert same_source == (pair["scope"] == "within-source")
    within = [p for p in key["patients"] if p["registration"] == 2]
    assert within and all(p["variations"] for p in within)


def test_hard_negatives_look_alike_but_are_different_persons(population: GeneratedSet) -> None:
    key = population.answer_key
    persons = _persons(population)
    groups = key["scenarios"]["hard_negatives"]
    assert Counter(g["kind"] for g in groups) == {"twin": 3, "junior": 3}
    for group in groups:
        a, b = (persons[p]["truth"] for p in group["persons"])
        assert a["family"] == b["family"] and a["postal_code"] == b["postal_code"]
        if group["kind"] == "twin":
            assert a["birth_date"] == b["birth_date"]
            assert a["given"][0] != b["given"][0] and a["sex"] != b["sex"]
        else:
            assert a["given"] == b["given"] and a["sex"] == b["sex"] == "male"
            assert int(b["birth_date"][:4]) - int(a["birth_date"][:4]) >= 19
            assert (a["suffix"], b["suffix"]) == (None, "Jr.")
    owner = {p["patient_key"]: p["person_id"] for p in key["patients"]}
    pairs = key["hard_negative_pairs"]
    assert Counter(p["kind"] for p in pairs).keys() == {"twin", "junior"}
    duplicates = {(p["a"], p["b"]) for p in key["duplicate_pairs"]}
    for pair in pairs:
        assert owner[pair["a"]] != owner[pair["b"]]
        assert sorted([owner[pair["a"]], owner[pair["b"]]]) == sorted(pair["persons"])
        assert (pair["a"], pair["b"]) not in duplicates


def test_sources_overlap_as_configured(population: GeneratedSet) -> None:
    persons = population.answer_key["persons"]
    held_by_several = sum(1 for p in persons if len(p["sources"]) >= 2) / len(persons)
    assert held_by_several == pytest.approx(0.8, abs=0.06)
    holders = defaultdict(set)
    for patient in population.answer_key["patients"]:
        holders[patient["person_id"]].add(patient["source"])
    assert all(holders[p["person_id"]] == set(p["sources"]) for p in persons)
    alone = generate(GeneratorConfig(patients=40, overlap=0.0, hard_negative_rate=0.0))
    assert all(len(p["sources"]) == 1 for p in alone.answer_key["persons"])
    assert not alone.answer_key["duplicate_pairs"] or all(
        p["scope"] == "within-source" for p in alone.answer_key["duplicate_pairs"]
    )


def test_only_records_marked_shared_id_carry_the_shared_identifier(
    population: GeneratedSet,
) -> None:
    patients = {p["patient_key"]: p for p in population.answer_key["patients"]}
    cohort = _cohort(population)
    # The planted-conflicts cohort carries it always (its identity must be certain).
    assert all(p["shared_id"] for p in patients.values() if p["person_id"] in cohort)
    others = [p for p in patients.values() if p["person_id"] not in cohort]
    share = sum(p["shared_id"] for p in others) / len(others)
    assert share == pytest.approx(0.2, abs=0.05)
    fhir = [
        r
        for r in _key_records(population)
        if not r["resource_type"].startswith(("AD", "OR", "MDM", "ClaimLine"))
    ]
    for entry in fhir:
        resource = _resource(population, entry)
        if entry["resource_type"] != "Patient":
            # Clinical resources never name the person: only a Patient's identifier may.
            assert entry["person_id"] not in orjson.dumps(resource).decode()
            continue
        shared = [
            i["value"]
            for i in resource["identifier"]
            if i["system"] == DEFAULT_ENTERPRISE_ID_SYSTEM
        ]
        expected = [entry["person_id"]] if patients[entry["patient_key"]]["shared_id"] else []
        assert shared == expected
    for line in population.files["payer.ndjson"].splitlines():
        member = orjson.loads(line)["patient"]
        patient = patients[f"payer|{member['member_id']}"]
        assert patient["shared_id"]  # the cohort's only
        assert member["identifiers"] == [
            {"system": DEFAULT_ENTERPRISE_ID_SYSTEM, "value": patient["person_id"]}
        ]
    for message in er7.split_messages(population.files["lab-system.hl7"]):
        pid = er7.parse(message).first("PID")
        assert pid is not None
        patient = patients[f"lab-system|{pid.value(3, 1)}"]
        ids = {r.split("^")[0]: r for r in pid.repetitions(3)}
        assert (patient["person_id"] in ids) == patient["shared_id"]
        if patient["shared_id"]:
            assert f"&{DEFAULT_ENTERPRISE_ID_SYSTEM}&URI^PI" in ids[patient["person_id"]]


def test_hl7_demographics_are_the_persons_unless_varied(population: GeneratedSet) -> None:
    persons = _persons(population)
    patients = {p["patient_key"]: p for p in population.answer_key["patients"]}
    exact = 0
    for message in er7.split_messages(population.files["lab-system.hl7"]):
        pid = er7.parse(message).first("PID")
        assert pid is not None
        patient = patients[f"lab-system|{pid.value(3, 1)}"]
        if patient["variations"]:
            continue
        truth = persons[patient["person_id"]]["truth"]
        given = " ".join(truth["given"])
        assert pid.value(5, 1) == truth["family"]
        assert f"{pid.value(5, 2)} {pid.value(5, 3)}".strip() == given
        assert pid.value(7) == truth["birth_date"].replace("-", "")
        assert pid.value(8) == {"male": "M", "female": "F"}[truth["sex"]]
        assert pid.value(11, 5) == truth["postal_code"]
        exact += 1
    assert exact > 100


def test_the_population_has_accented_hyphenated_and_multi_part_names(
    population: GeneratedSet,
) -> None:
    names = [
        (p["truth"]["family"], " ".join(p["truth"]["given"]))
        for p in population.answer_key["persons"]
    ]
    assert any(not unicodedata.normalize("NFC", f + g).isascii() for f, g in names)
    assert any("-" in f for f, _ in names)
    assert any(" " in f for f, _ in names)  # García López, van der Berg
    assert any(" " in g for _, g in names)  # middle or compound given names
    hl7 = population.files["lab-system.hl7"].decode("utf-8")
    assert not hl7.isascii()  # sent as UTF-8, as MSH-18 says


def test_summary_counts_what_the_key_lists(population: GeneratedSet) -> None:
    key = population.answer_key
    summary = key["summary"]
    assert summary["persons"] == 300 == len(key["persons"])
    assert sum(summary["patient_records"].values()) == len(key["patients"])
    assert sum(sum(v.values()) for v in summary["records"].values()) == len(key["records"])
    text = population.summary
    for source in summary["patient_records"]:
        assert source in text
    for kind in variations.DESCRIPTIONS:
        assert kind in text


# --- variations ----------------------------------------------------------------------------


def test_typos_are_one_edit_and_keep_the_first_letter() -> None:
    rng = random.Random(5)
    for name in ("Hernández", "Smith-Jones", "van der Berg", "Katherine", "García López"):
        for _ in range(50):
            typo = variations.typo(name, rng)
            assert typo is not None and typo[0] == name[0]
            assert _one_edit(typo, name), (name, typo)
    assert variations.typo("Li", rng) is None


def test_birth_date_typos_change_one_digit_and_stay_valid_and_past() -> None:
    rng = random.Random(9)
    born, latest = date(1990, 3, 7), date(2026, 1, 1)
    for _ in range(200):
        typo = variations.birth_date_typo(born, rng, latest)
        assert typo is not None and typo <= latest and typo != date(1990, 7, 3)
        assert sum(a != b for a, b in zip(typo.isoformat(), born.isoformat(), strict=True)) == 1


# --- options and the command ---------------------------------------------------------------


def test_sources_are_parsed_and_checked() -> None:
    specs = parse_sources("a-ehr:fhir, b-lab:hl7v2, c-plan:claims")
    assert [(s.name, s.format, s.file_name) for s in specs] == [
        ("a-ehr", "fhir", "a-ehr.ndjson"),
        ("b-lab", "hl7v2", "b-lab.hl7"),
        ("c-plan", "claims", "c-plan.ndjson"),
    ]
    assert specs[0].style != specs[1].style
    # A claims source holds only what plants give it: a set needs an EHR too.
    for bad in ("", "x:csv", "Bad Name:fhir", "a:fhir,a:hl7v2", "c-plan:claims"):
        with pytest.raises(ValueError):
            parse_sources(bad)


def test_the_command_writes_the_files_publish_reads(tmp_path: Path) -> None:
    out = tmp_path / "set"
    result = CliRunner().invoke(
        main,
        [
            "generate",
            "--patients",
            "30",
            "--seed",
            "3",
            "--sources",
            "ward-ehr:fhir,path-lab:hl7v2",
            "--out",
            str(out),
            "--progress-every",
            "10",
        ],
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == [
        "answer_key.json",
        "path-lab.hl7",
        "ward-ehr.ndjson",
    ]
    assert "rendered 10/" in result.stderr
    assert "concord publish --source ward-ehr" in result.stdout
    key = orjson.loads((out / "answer_key.json").read_bytes())
    assert key["config"]["seed"] == 3 and key["format"] == "concord-generate-answer-key/1"
    count = sum(1 for _ in read_file(out / "ward-ehr.ndjson", "ward-ehr"))
    count += sum(1 for _ in read_file(out / "path-lab.hl7", "path-lab"))
    assert count == len(key["records"])
    bad = CliRunner().invoke(main, ["generate", "--out", str(out), "--sources", "x:csv"])
    assert bad.exit_code == 2 and "format must be one of" in bad.output


# --- planted disagreements and stale records (issue 5) -----------------------------------


def _plants(population: GeneratedSet) -> list[dict[str, Any]]:
    return [e for e in population.answer_key["scenarios"]["conflicts"] if e["kind"] != "control"]


def _planted_resources(
    population: GeneratedSet, plant: dict[str, Any], resource_type: str
) -> dict[str, list[dict[str, Any]]]:
    """The plant's person's resources of one type, by source."""
    found: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for entry in _key_records(population):
        if entry["person_id"] == plant["person_id"] and entry["resource_type"] == resource_type:
            found[entry["source"]].append(_resource(population, entry))
    return found


def test_every_kind_is_planted_and_as_many_persons_are_controls(population: GeneratedSet) -> None:
    section = population.answer_key["scenarios"]["conflicts"]
    kinds = Counter(e["kind"] for e in section)
    controls = kinds.pop("control")
    assert set(kinds) == set(planted.KINDS)
    assert controls == sum(kinds.values()) == round(300 * 0.1)
    assert len({e["person_id"] for e in section}) == len(section)  # one plant per person
    for plant in _plants(population):
        assert plant["expect"], plant
        assert plant["kind"] in {e["kind"] for e in plant["expect"]}


def test_the_cohorts_identities_are_certain_and_its_sources_agree_but_for_the_plant(
    population: GeneratedSet,
) -> None:
    cohort = _cohort(population)
    persons = _persons(population)
    held = [p for p in population.answer_key["patients"] if p["person_id"] in cohort]
    for patient in held:
        assert patient["registration"] == 1 and patient["shared_id"]
        assert set(patient["variations"]) <= {
            variations.PLANTED_BIRTH_DATE,
            variations.PLANTED_SEX,
            variations.PLANTED_NAME,
        }
    by_person = Counter(p["person_id"] for p in held)
    assert all(by_person[person] == len(persons[person]["sources"]) for person in cohort)
    # Controls: every source sends the same facts (the same number of records of each type).
    for entry in population.answer_key["scenarios"]["conflicts"]:
        if entry["kind"] != "control":
            continue
        counts = defaultdict(Counter)
        for record in _key_records(population):
            if record["person_id"] == entry["person_id"] and record["resource_type"] in (
                "Observation",
                "ORU^R01",
            ):
                counts[record["source"]][record["resource_type"]] += 1
        fhir = [dict(c)["Observation"] for s, c in counts.items() if "Observation" in c]
        assert len(set(fhir)) <= 1, (entry["person_id"], counts)


def test_planted_medications_say_what_the_key_expects(population: GeneratedSet) -> None:
    checked = Counter[str]()
    for plant in _plants(population):
        if plant["kind"] not in (
            planted.MEDICATION_STATUS,
            planted.MEDICATION_DOSE,
            "stale_reconfirm",
        ):
            continue
        statements = _planted_resources(population, plant, "MedicationStatement")
        assert sorted(statements) == sorted(plant["sources"])
        said = {s: r[0] for s, r in statements.items()}
        statuses = sorted(r["status"] for r in said.values())
        doses = {r["dosage"][0]["doseAndRate"][0]["doseQuantity"]["value"] for r in said.values()}
        if plant["kind"] == planted.MEDICATION_STATUS:
            assert statuses == ["active", "stopped"] and len(doses) == 1
        elif plant["kind"] == planted.MEDICATION_DOSE:
            assert statuses == ["active", "active"] and len(doses) == 2
        for stale in (e for e in plant["expect"] if e["kind"] == "stale_reconfirm"):
            resource = said[stale["stale_source"]]
            asserted = datetime.fromisoformat(resource["meta"]["lastUpdated"])
            assert datetime.fromisoformat(stale["due"]) - asserted == timedelta(days=90)
            assert resource["status"] == "active"
            code = resource["medicationCodeableConcept"]["coding"][0]["code"]
            assert stale["attribute"] == f"Medication/{code}"
        checked[plant["kind"]] += 1
    assert len(checked) == 3


def test_planted_results_and_diagnoses_differ_as_the_key_says(population: GeneratedSet) -> None:
    checked = Counter[str]()
    for plant in _plants(population):
        kind = plant["kind"]
        if kind == planted.ONCOLOGY_BIOMARKER:
            markers = _planted_resources(population, plant, "Observation")
            coded = [
                (r["code"]["coding"][0]["code"], r["valueCodeableConcept"]["coding"][0]["code"])
                for source in plant["sources"]
                for r in markers[source]
                if "valueCodeableConcept" in r
            ]
            [marker] = [m for m in catalogue.BIOMARKERS if m.loinc == coded[0][0]]
            assert sorted(coded) == sorted(
                [(marker.loinc, marker.positive), (marker.loinc, marker.negative)]
            )
            assert {e["attribute"] for e in plant["expect"]} == {
                f"Observation/{marker.loinc}",
                f"Oncology.biomarker/{marker.name}",
            }
        elif kind in (
            planted.ONCOLOGY_STAGE,
            planted.ONCOLOGY_METASTATIC,
            planted.ONCOLOGY_PRIMARY,
        ):
            tumors = _planted_resources(population, plant, "Condition")
            icd = [
                {
                    c["code"]["coding"][0]["code"]
                    for c in tumors[source]
                    if c["code"]["coding"][0]["code"].startswith("C")
                }
                for source in plant["sources"]
            ]
            assert all(len(codes) == 1 for codes in icd), icd
            assert (icd[0] == icd[1]) == (kind == planted.ONCOLOGY_STAGE)
        elif kind == planted.STALE_MAX_AGE:
            dues = {e["due"] for e in plant["expect"]}
            assert len(dues) == 1 and all(
                e["stale_source"] == plant["sources"][0] for e in plant["expect"]
            )
            assert datetime.fromisoformat(dues.pop()) < DEFAULT_AS_OF
        else:
            continue
        checked[kind] += 1
    assert len(checked) == 5
