"""Normalization, pure: a FHIR Patient becomes an identity request and demographic facts."""

from __future__ import annotations

import hashlib
import unicodedata
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from concord.events.models import ClinicalFact, IngestedRecord, Provenance
from concord.normalization.facts.drafts import to_fact
from concord.normalization.identity.demographics import from_fhir_patient
from concord.normalization.patient import (
    BIRTH_DATE,
    GENDER,
    NAME,
    normalized_name,
)
from concord.normalization.records import ReadRecord, authoritative_id, read_record
from concord.normalization.terminology import Terminology

MPI = "urn:concord:enterprise-patient-id"
TERMINOLOGY = Terminology.load()
LOCAL = "urn:hospital-a:mrn"


def _patient(**fields: Any) -> dict[str, Any]:
    patient: dict[str, Any] = {
        "resourceType": "Patient",
        "id": "p1",
        "identifier": [{"system": LOCAL, "value": "MRN-1"}, {"system": MPI, "value": "E-100"}],
        "name": [{"use": "official", "family": "García", "given": ["José", "Luis"]}],
        "gender": "male",
        "birthDate": "1970-02-03",
    }
    patient.update(fields)
    return {k: v for k, v in patient.items() if v is not None}


def _provenance() -> Provenance:
    return Provenance(
        source_system="ehr-alpha",
        source_record_id="Patient/p1",
        source_record_version="7",
        event_time=datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
        received_time=datetime(2024, 1, 2, 3, 4, 6, tzinfo=UTC),
        raw_topic="ehr.raw.fhir",
        raw_partition=3,
        raw_offset=99,
        payload_sha256="cd" * 32,
    )


def _record(patient: dict[str, Any], record_id: str = "rec-1") -> IngestedRecord:
    return IngestedRecord(
        record_id=record_id,
        format="FHIR_R4",
        resource_type="Patient",
        payload=orjson.dumps(patient),
        provenance=_provenance(),
    )


def _name(**name: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "name": [name]}


# --- the authoritative (enterprise) id ------------------------------------------------------------


def enterprise_id(patient: dict[str, Any], systems: list[str]) -> str | None:
    return authoritative_id(from_fhir_patient(patient, "ehr-alpha"), systems)


def test_enterprise_id_is_the_value_of_the_configured_system() -> None:
    assert enterprise_id(_patient(), [MPI]) == "E-100"
    assert enterprise_id(_patient(), [LOCAL]) == "MRN-1"


def test_enterprise_id_follows_the_order_of_the_systems_not_of_the_identifiers() -> None:
    assert enterprise_id(_patient(), [MPI, LOCAL]) == "E-100"
    assert enterprise_id(_patient(), [LOCAL, MPI]) == "MRN-1"
    assert enterprise_id(_patient(), ["urn:other", MPI, LOCAL]) == "E-100"


def test_enterprise_id_ignores_blank_values_and_trims() -> None:
    patient = _patient(
        identifier=[
            {"system": MPI, "value": "   "},
            {"system": MPI, "value": ""},
            {"system": MPI},
            {"system": MPI, "value": "  E-200 "},
        ]
    )
    assert enterprise_id(patient, [MPI]) == "E-200"
    blank_first = _patient(
        identifier=[{"system": MPI, "value": " "}, {"system": LOCAL, "value": "MRN-9"}]
    )
    assert enterprise_id(blank_first, [MPI, LOCAL]) == "MRN-9"


def test_enterprise_id_absent() -> None:
    assert enterprise_id(_patient(), ["urn:nowhere"]) is None
    assert enterprise_id(_patient(), []) is None
    assert enterprise_id({"resourceType": "Patient"}, [MPI]) is None
    assert enterprise_id(_patient(identifier=[{"value": "E-1"}]), [MPI]) is None


# --- normalized_name ----------------------------------------------------------------------------


def test_official_name_is_preferred_over_the_first() -> None:
    patient = {
        "name": [
            {"use": "usual", "family": "Nick", "given": ["Name"]},
            {"use": "official", "family": "Real", "given": ["Person"]},
        ]
    }
    assert normalized_name(patient) == ("real|person", "Person Real")


def test_without_an_official_name_the_first_is_used() -> None:
    patient = {
        "name": [
            {"use": "usual", "family": "First", "given": ["One"]},
            {"use": "nickname", "family": "Second", "given": ["Two"]},
        ]
    }
    assert normalized_name(patient) == ("first|one", "One First")


def test_case_and_whitespace_are_folded() -> None:
    a = normalized_name(_name(family="  McDONALD ", given=["Mary ", "  Ann"]))
    b = normalized_name(_name(family="mcdonald", given=["mary ann"]))
    assert a is not None and b is not None
    assert a[0] == b[0] == "mcdonald|mary ann"
    assert a[1] == "Mary Ann McDONALD"


def test_accents_are_kept() -> None:
    jose = normalized_name(_name(family="Pérez", given=["José"]))
    joseph = normalized_name(_name(family="Pérez", given=["Jose"]))
    assert jose is not None and joseph is not None
    assert jose[0] != joseph[0]


def test_nfc_and_nfd_spellings_are_equal() -> None:
    nfc = unicodedata.normalize("NFC", "José")
    nfd = unicodedata.normalize("NFD", "José")
    assert nfc != nfd
    a = normalized_name(_name(family="Muñoz", given=[nfc]))
    b = normalized_name(_name(family=unicodedata.normalize("NFD", "MUÑOZ"), given=[nfd]))
    assert a is not None and b is not None
    assert a[0] == b[0]
    assert unicodedata.is_normalized("NFC", a[1])
    assert unicodedata.is_normalized("NFC", b[1])


def test_no_usable_name() -> None:
    assert normalized_name({"resourceType": "Patient"}) is None
    assert normalized_name({"name": []}) is None
    assert normalized_name(_name(family="  ", given=[" "])) is None
    assert normalized_name(_name(text="Only Text")) is None


def test_family_only_and_given_only() -> None:
    assert normalized_name(_name(family="Solo")) == ("solo|", "Solo")
    assert normalized_name(_name(given=["Cher"])) == ("|cher", "Cher")


# --- patient_facts ------------------------------------------------------------------------------


def _fact_id(record_id: str, attribute: str) -> str:
    return hashlib.sha256(f"{record_id}\x1f{attribute}".encode()).hexdigest()[:32]


def _read(record: IngestedRecord) -> ReadRecord | None:
    return read_record(record, TERMINOLOGY, [MPI])


def _facts(record: IngestedRecord) -> list[ClinicalFact]:
    read = _read(record)
    assert read is not None
    eid = read.request.authoritative_id or "E-matched"
    return [to_fact(d, patient_id=eid, record=record) for d in read.drafts]


def test_three_facts_with_provenance_and_deterministic_ids() -> None:
    record = _record(_patient())
    read = _read(record)
    assert read is not None
    assert read.request.authoritative_id == "E-100"
    assert read.request.local_ids[0] == "Patient/p1"
    assert f"id:{LOCAL}|MRN-1" in read.request.local_ids
    facts = _facts(record)
    by_attribute = {f.attribute: f for f in facts}
    assert sorted(by_attribute) == sorted([BIRTH_DATE, GENDER, NAME])
    assert len(facts) == 3
    for fact in facts:
        assert fact.patient_id == "E-100"
        assert fact.attribute_class == "DEMOGRAPHICS"
        assert fact.status == "ASSERTED"
        assert fact.provenance == record.provenance
        # The same ids as before identity matching: redelivered old records change nothing.
        assert fact.fact_id == _fact_id("rec-1", fact.attribute)
    assert by_attribute[BIRTH_DATE].value == "1970-02-03"
    assert by_attribute[GENDER].value == "male"
    assert by_attribute[NAME].value == "garcía|josé luis"
    assert by_attribute[NAME].display == "José Luis García"


def test_fact_ids_are_the_same_on_redelivery_and_differ_per_record() -> None:
    first = _facts(_record(_patient()))
    again = _facts(_record(_patient()))
    other = _facts(_record(_patient(), record_id="rec-2"))
    assert [f.fact_id for f in first] == [f.fact_id for f in again]
    assert not {f.fact_id for f in first} & {f.fact_id for f in other}
    assert first == again


def test_without_an_enterprise_id_the_patient_goes_to_identity_matching() -> None:
    local_only = _patient(identifier=[{"system": LOCAL, "value": "MRN-SECRET-1"}])
    read = _read(_record(local_only))
    assert read is not None
    assert read.request.authoritative_id is None
    assert read.request.demographics is not None
    assert read.request.demographics.family == "garcía"


def test_absent_attributes_give_no_fact() -> None:
    only_gender = _facts(_record(_patient(birthDate=None, name=None)))
    assert [f.attribute for f in only_gender] == [GENDER]
    assert _read(_record(_patient(birthDate=None, name=None, gender=None))) is None
    blank_name = _facts(_record(_patient(name=[{"family": " ", "given": []}])))
    assert {f.attribute for f in blank_name} == {BIRTH_DATE, GENDER}


def test_deletes_are_not_normalized_yet() -> None:
    delete = _record(_patient()).model_copy(update={"operation": "DELETE"})
    assert _read(delete) is None


CLAIMS = Path(__file__).resolve().parents[2] / "services/concord/demo/claims-sample.ndjson"


def test_a_claim_line_gives_diagnoses_and_its_drug_for_its_member() -> None:
    line = orjson.loads(CLAIMS.read_bytes().splitlines()[0])
    record = _record(_patient()).model_copy(
        update={"format": "CLAIM", "resource_type": "ClaimLine", "payload": orjson.dumps(line)}
    )
    read = _read(record)
    assert read is not None
    assert read.request.authoritative_id == "EP-000901"
    assert read.request.demographics is not None
    assert read.request.demographics.family == "ravensholt"
    assert any(local.endswith("|BWH884120375") for local in read.request.local_ids)
    drafts = {d.attribute: d for d in read.drafts}
    assert drafts["Condition/C78.00"].attribute_class == "ONCOLOGY"  # a secondary neoplasm
    assert drafts["Condition/Z51.11"].attribute_class == "CONDITION"
    assert drafts["Condition/C78.00"].effective_text == "2026-09-14"
    [drug] = [d for d in read.drafts if d.attribute.startswith("Medication/")]
    assert drug.value == "completed"
    assert drug.original_code is not None and drug.original_code[1] == "50242-0132-01"


def _hl7_record(message: bytes) -> IngestedRecord:
    return _record(_patient()).model_copy(
        update={"format": "HL7V2", "resource_type": "ADT^A40", "payload": message}
    )


def test_an_a40_absorbs_the_mrg_patient_into_the_pid_patient() -> None:
    message = (
        b"MSH|^~\\&|EPIC|GH|CONCORD|GH|20240301083000-0500||ADT^A40^ADT_A39|C1|P|2.5.1\r"
        b"EVN|A40|20240301082500-0500\r"
        b"PID|1||MRN-2^^^GH^MR||Doe^Jo||19700101|F\r"
        b"MRG|MRN-1^^^GH^MR\r"
    )
    read = _read(_hl7_record(message))
    assert read is not None
    assert read.request.local_ids == ("id:GH|MRN-2",)
    assert read.request.absorbs == ("id:GH|MRN-1",)
    # An MRG in a message that is no merge absorbs nothing.
    update = message.replace(b"ADT^A40^ADT_A39", b"ADT^A08^ADT_A01")
    other = _read(_hl7_record(update))
    assert other is not None and other.request.absorbs == ()


def test_a_fhir_patient_link_names_the_merge() -> None:
    survivor = _patient(id="p2", link=[{"type": "replaces", "other": {"reference": "Patient/p1"}}])
    read = _read(_record(survivor))
    assert read is not None
    assert read.request.absorbs == ("Patient/p1",)
    assert read.drafts  # the survivor's demographics are facts as ever
    replaced = _patient(link=[{"type": "replaced-by", "other": {"reference": "Patient/p2"}}])
    read = _read(_record(replaced))
    assert read is not None
    assert read.request.local_ids == ("Patient/p2",)
    assert read.request.absorbs[0] == "Patient/p1"
    assert read.drafts == ()  # the replaced record describes nobody current
