"""FHIR ingestion of clinical resources: the rules that matter clinically, Bundle semantics,
deletes, references made self-contained, and the public FHIR samples."""

from __future__ import annotations

import collections
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from concord.deadletters import REASON_CODES, Rejection
from concord.events.models import IngestedRecord
from concord.events.raw import RawEvent
from concord.ingestion.codes import check_coding
from concord.ingestion.fhir import SUPPORTED_TYPES, ingest_fhir

RECEIVED = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
SECRET = "Zyxwvut-4471"
SAMPLES = Path(__file__).resolve().parents[3] / "shared" / "data" / "fhir-converter-samples"
LOINC = "http://loinc.org"


def _raw(document: Any) -> RawEvent:
    return RawEvent(
        topic="ehr.raw.fhir",
        partition=0,
        offset=9,
        key=None,
        value=orjson.dumps(document),
        headers=(("source", b"ehr-alpha"),),
        received_time=RECEIVED,
    )


def _ingest(document: Any) -> list[IngestedRecord] | Rejection:
    return ingest_fhir(_raw(document), max_payload_bytes=10_000_000)


def _rejected(document: Any) -> Rejection:
    outcome = _ingest(document)
    assert isinstance(outcome, Rejection), outcome
    assert outcome.reason_code in REASON_CODES
    assert SECRET not in outcome.reason
    return outcome


def _accepted(document: Any) -> list[IngestedRecord]:
    outcome = _ingest(document)
    assert isinstance(outcome, list), outcome
    return outcome


def _observation(**overrides: Any) -> dict[str, Any]:
    observation: dict[str, Any] = {
        "resourceType": "Observation",
        "id": "o1",
        "meta": {"versionId": "2", "lastUpdated": "2024-03-01T08:00:00-05:00"},
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "2345-7", "display": "Glucose"}]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2024-03-01T07:30:00-05:00",
        "valueQuantity": {"value": 99, "unit": "mg/dL", "system": "http://unitsofmeasure.org"},
    }
    observation.update(overrides)
    return observation


def _patient(pid: str = "p1") -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid, "name": [{"family": SECRET}]}


def _bundle(kind: str, *entries: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


# --- every ingested type -----------------------------------------------------------------------

MINIMAL: dict[str, dict[str, Any]] = {
    "Patient": _patient(),
    "Observation": _observation(),
    "Condition": {
        "resourceType": "Condition",
        "id": "c1",
        "subject": {"reference": "Patient/p1"},
        "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "C50.911"}]},
        "clinicalStatus": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                    "code": "active",
                }
            ]
        },
    },
    "AllergyIntolerance": {
        "resourceType": "AllergyIntolerance",
        "id": "a1",
        "patient": {"reference": "Patient/p1"},
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "91936005"}]},
    },
    "MedicationStatement": {
        "resourceType": "MedicationStatement",
        "id": "ms1",
        "status": "active",
        "subject": {"reference": "Patient/p1"},
        "medicationCodeableConcept": {
            "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "6809"}]
        },
    },
    "MedicationRequest": {
        "resourceType": "MedicationRequest",
        "id": "mr1",
        "status": "active",
        "intent": "order",
        "subject": {"reference": "Patient/p1"},
        "medicationCodeableConcept": {"text": "metformin 500 mg"},
    },
    "Encounter": {
        "resourceType": "Encounter",
        "id": "e1",
        "status": "finished",
        "class": {
            "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
            "code": "AMB",
        },
    },
    "DiagnosticReport": {
        "resourceType": "DiagnosticReport",
        "id": "d1",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "58410-2"}]},
        "subject": {"reference": "Patient/p1"},
    },
    "DocumentReference": {
        "resourceType": "DocumentReference",
        "id": "doc1",
        "status": "current",
        "content": [{"attachment": {"contentType": "text/plain", "data": "aGVsbG8="}}],
    },
}


def test_every_ingested_type_has_a_minimal_example() -> None:
    assert set(MINIMAL) == SUPPORTED_TYPES


@pytest.mark.parametrize("resource_type", sorted(MINIMAL))
def test_each_ingested_type_is_accepted(resource_type: str) -> None:
    [record] = _accepted(MINIMAL[resource_type])
    assert record.resource_type == resource_type
    assert record.operation == "UPSERT"
    assert record.provenance.source_record_id == f"{resource_type}/{MINIMAL[resource_type]['id']}"


# --- clinical rules ----------------------------------------------------------------------------


def test_a_result_about_nobody_is_rejected() -> None:
    observation = _observation()
    del observation["subject"]
    outcome = _rejected(observation)
    assert outcome.reason_code == "MISSING_PATIENT_REFERENCE"
    assert outcome.location == "Observation.subject"


def test_a_subject_that_is_not_a_patient_is_rejected() -> None:
    outcome = _rejected(_observation(subject={"reference": "Group/g1"}))
    assert outcome.reason_code == "MISSING_PATIENT_REFERENCE"


def test_a_logical_patient_reference_by_identifier_is_accepted() -> None:
    subject = {"identifier": {"system": "urn:mrn", "value": SECRET}}
    assert _accepted(_observation(subject=subject))


def _warned(document: Any) -> tuple[IngestedRecord, list[tuple[str, str | None]]]:
    """The one record a resource became, and its warnings' codes and locations."""
    [record] = _accepted(document)
    for warning in record.warnings:
        assert warning.reason_code in REASON_CODES and SECRET not in warning.message
    return record, [(w.reason_code, w.location) for w in record.warnings]


def test_a_clinical_code_without_a_system_is_kept_with_a_warning() -> None:
    record, warnings = _warned(_observation(code={"coding": [{"code": "2345-7"}]}))
    assert warnings == [("CODE_WITHOUT_SYSTEM", "Observation.code.coding[0]")]
    assert orjson.loads(record.payload)["code"] == {"coding": [{"code": "2345-7"}]}


def test_a_code_without_a_system_outside_the_compared_codes_is_accepted() -> None:
    category = [{"coding": [{"code": "laboratory"}]}]
    assert _accepted(_observation(category=category))


@pytest.mark.parametrize(
    ("system", "code"),
    [
        (LOINC, "2345-8"),  # wrong check digit
        (LOINC, "2345"),
        ("http://snomed.info/sct", "91936004"),  # wrong Verhoeff digit
        ("http://snomed.info/sct", "91936015"),  # a description id, not a concept
        ("http://hl7.org/fhir/sid/icd-10-cm", "50.911"),
        ("http://www.nlm.nih.gov/research/umls/rxnorm", "RX6809"),
        ("http://hl7.org/fhir/sid/ndc", "0002-1433"),
    ],
)
def test_malformed_codes_are_kept_with_a_warning(system: str, code: str) -> None:
    record, warnings = _warned(_observation(code={"coding": [{"system": system, "code": code}]}))
    assert warnings == [("INVALID_CODE", "Observation.code.coding[0]")]
    assert code not in record.warnings[0].message


@pytest.mark.parametrize(
    ("system", "code"),
    [
        (LOINC, "718-7"),
        (LOINC, "LA6576-8"),
        ("http://snomed.info/sct", "254637007"),
        ("http://snomed.info/sct", "128045006:{363698007=56459004}"),
        ("http://hl7.org/fhir/sid/icd-10-cm", "C78.00"),
        ("http://hl7.org/fhir/sid/ndc", "00002-1433-80"),
        ("http://www.ama-assn.org/go/cpt", "0001F"),
        ("urn:oid:1.2.3.4", "anything-local"),
    ],
)
def test_well_formed_codes_pass(system: str, code: str) -> None:
    assert check_coding({"system": system, "code": code}) is None


def test_a_date_time_without_a_zone_is_left_out_with_its_path() -> None:
    record, warnings = _warned(_observation(effectiveDateTime="2024-03-01T07:30:00"))
    assert warnings == [("DATETIME_WITHOUT_ZONE", "Observation.effectiveDateTime")]
    assert "effectiveDateTime" not in orjson.loads(record.payload)


def test_a_date_without_a_time_needs_no_zone() -> None:
    assert _accepted(_observation(effectiveDateTime="2024-03-01"))


def test_a_status_outside_its_value_set_is_rejected() -> None:
    outcome = _rejected(_observation(status="done"))
    assert outcome.reason_code == "FHIR_INVALID"
    assert outcome.location == "Observation.status"


def test_a_contained_reference_that_names_nothing_is_a_warning() -> None:
    _, warnings = _warned(_observation(specimen={"reference": "#sp1"}))
    assert warnings == [("UNRESOLVED_REFERENCE", "Observation.specimen.reference")]


def test_an_unknown_element_is_not_named_because_its_key_is_input() -> None:
    patient = _patient() | {SECRET: "x", "name": [{"family": "Doe", "MRN12345": 1}]}
    outcome = _rejected(patient)
    assert outcome.reason_code == "FHIR_INVALID"
    assert "MRN12345" not in outcome.reason and "MRN12345" not in str(outcome.location)
    assert SECRET not in str(outcome.location)
    assert "name.0.*" in outcome.reason and "extra_forbidden" in outcome.reason


def test_a_library_crash_on_odd_input_is_a_rejection_not_an_exception() -> None:
    patient = _patient() | {"contained": [{"resourceType": None}]}
    assert _rejected(patient).reason_code == "FHIR_INVALID"


# --- Bundles -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind",
    ["transaction", "batch", "collection", "history", "searchset", "message", "document"],
)
def test_every_bundle_type_is_split_into_its_entries(kind: str) -> None:
    entries = [{"resource": _patient("p1")}, {"resource": _observation()}]
    records = _accepted(_bundle(kind, *entries))
    assert [r.provenance.source_record_id for r in records] == ["Patient/p1", "Observation/o1"]
    assert [r.provenance.raw_location for r in records] == ["Bundle.entry[0]", "Bundle.entry[1]"]
    assert len({r.provenance.payload_sha256 for r in records}) == 1


def test_an_unknown_bundle_type_is_rejected() -> None:
    outcome = _rejected(_bundle("pile", {"resource": _patient()}))
    assert outcome.reason_code == "FHIR_INVALID"
    assert outcome.location == "Bundle.type"


def test_urn_uuid_references_are_rewritten_to_the_resources_they_name() -> None:
    observation = _observation(subject={"reference": "urn:uuid:1111"})
    bundle = _bundle(
        "transaction",
        {"fullUrl": "urn:uuid:1111", "resource": _patient("p9")},
        {"fullUrl": "urn:uuid:2222", "resource": observation},
    )
    _, record = _accepted(bundle)
    assert orjson.loads(record.payload)["subject"] == {"reference": "Patient/p9"}


def test_an_unresolved_urn_uuid_patient_reference_leaves_the_entry_out() -> None:
    observation = _observation(subject={"reference": "urn:uuid:9999"})
    [patient] = _accepted(
        _bundle("transaction", {"resource": _patient()}, {"resource": observation})
    )
    [warning] = patient.warnings
    assert warning.reason_code == "UNRESOLVED_REFERENCE"
    assert warning.location == "Bundle.entry[1].resource.subject.reference"
    outcome = _rejected(_bundle("transaction", {"resource": observation}))
    assert outcome.reason_code == "UNRESOLVED_REFERENCE"
    assert outcome.location == "Bundle.entry[0].resource.subject.reference"


def test_a_referenced_medication_travels_contained_in_the_request() -> None:
    medication = {
        "resourceType": "Medication",
        "id": "med1",
        "code": {
            "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "6809"}]
        },
    }
    request = MINIMAL["MedicationRequest"] | {
        "medicationReference": {"reference": "Medication/med1"}
    }
    del request["medicationCodeableConcept"]
    records = _accepted(_bundle("batch", {"resource": medication}, {"resource": request}))
    [record] = records  # the Medication itself is not a record
    payload = orjson.loads(record.payload)
    assert payload["medicationReference"] == {"reference": "#med1"}
    assert payload["contained"] == [medication]


def test_a_history_delete_without_a_resource_becomes_a_delete_record() -> None:
    entry = {
        "request": {"method": "DELETE", "url": "Observation/o1"},
        "response": {"status": "204", "etag": 'W/"4"', "lastModified": "2024-04-01T10:00:00Z"},
    }
    [record] = _accepted(_bundle("history", entry))
    assert record.operation == "DELETE"
    assert record.resource_type == "Observation"
    assert record.provenance.source_record_id == "Observation/o1"
    assert record.provenance.source_record_version == "4"
    assert record.provenance.event_time == datetime(2024, 4, 1, 10, tzinfo=UTC)
    assert record.provenance.event_time_basis == "Bundle.entry.response.lastModified"


def test_a_delete_must_name_its_record() -> None:
    entry = {"request": {"method": "DELETE", "url": "Observation?code=2345-7"}}
    outcome = _rejected(_bundle("transaction", entry))
    assert outcome.reason_code == "FHIR_INVALID"
    assert outcome.location == "Bundle.entry[0].request.url"


def test_a_delete_and_the_upsert_of_the_same_version_are_different_records() -> None:
    upsert = _accepted(_observation())[0]
    entry = {"request": {"method": "DELETE", "url": "Observation/o1/_history/2"}}
    [delete] = _accepted(_bundle("history", entry))
    assert delete.provenance.source_record_version == "2"
    assert delete.operation == "DELETE"
    assert upsert.record_id != delete.record_id


def test_the_bundle_timestamp_fills_in_when_the_resource_carries_no_time() -> None:
    observation = _observation()
    del observation["meta"], observation["effectiveDateTime"]
    bundle = _bundle("collection", {"resource": observation})
    bundle["timestamp"] = "2024-02-02T02:02:02+01:00"
    [record] = _accepted(bundle)
    assert record.provenance.event_time == datetime(2024, 2, 2, 1, 2, 2, tzinfo=UTC)
    assert record.provenance.event_time_basis == "Bundle.timestamp"


def test_the_resources_own_time_comes_before_the_bundle_timestamp() -> None:
    observation = _observation()
    del observation["meta"]
    bundle = _bundle("collection", {"resource": observation})
    bundle["timestamp"] = "2024-02-02T02:02:02+01:00"
    [record] = _accepted(bundle)
    assert record.provenance.event_time == datetime(2024, 3, 1, 12, 30, tzinfo=UTC)
    assert record.provenance.event_time_basis == "Observation.effectiveDateTime"


# --- the public samples ------------------------------------------------------------------------


@pytest.mark.shared_data
def test_every_public_fhir_bundle_is_ingested_or_dead_lettered_with_a_reason() -> None:
    bundles = sorted((SAMPLES / "fhir-expected").rglob("*.json"))
    if not bundles:
        pytest.skip(f"NOT RUN: the public FHIR samples are absent ({SAMPLES} not found)")
    outcomes: collections.Counter[str] = collections.Counter()
    records = 0
    for path in bundles:
        outcome = _ingest(orjson.loads(path.read_bytes()))
        if isinstance(outcome, Rejection):
            assert outcome.reason_code in REASON_CODES
            assert outcome.location, path.name
            outcomes[outcome.reason_code] += 1
        else:
            assert outcome, path.name
            records += len(outcome)
            outcomes["INGESTED"] += 1
    print(f"\n{len(bundles)} FHIR Bundles: {dict(outcomes)}; {records} records")
    assert sum(outcomes.values()) == len(bundles)
    # Most of the converter's output is valid R4: a rule that rejected most would be wrong.
    assert outcomes["INGESTED"] > len(bundles) * 0.6
