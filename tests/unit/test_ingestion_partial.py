"""Partial acceptance (issue 13, item 5): a record is rejected whole only when it cannot be
read, cannot be tied to a patient, or is not the format it claims. An element at fault is left
out or kept and flagged, with a located warning carried by the record; a FHIR R4 resource type
Concord does not compare is kept for provenance. The rule per reason code: docs/deadletters.md.
"""

from __future__ import annotations

import collections
import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from fhir.resources.R4B import get_fhir_model_class

from concord.deadletters import REASON_CODES, Rejection
from concord.events.models import IngestedRecord, IngestionWarning
from concord.events.raw import RawEvent
from concord.hl7v2 import er7
from concord.ingestion.claims import ingest_claim
from concord.ingestion.fhir import ingest_fhir
from concord.ingestion.fhir_types import R4_RESOURCE_TYPES, R4B_ONLY_TYPES
from concord.ingestion.hl7v2 import ingest_hl7v2, zones_from
from concord.normalization.records import read_record
from concord.normalization.terminology import Terminology

RECEIVED = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
SECRET = "Zyxwvut-4471"  # a value that must never reach a warning
MRN = "MRN-55012"
SAMPLES = Path(__file__).resolve().parents[3] / "shared" / "data" / "fhir-converter-samples"
LOINC = "http://loinc.org"
CHICAGO = zones_from({"lab": "America/Chicago"}, None)
TERMINOLOGY = Terminology.load()


def _raw(value: bytes, topic: str = "ehr.raw.fhir") -> RawEvent:
    return RawEvent(
        topic=topic,
        partition=0,
        offset=9,
        key=None,
        value=value,
        headers=(("source", b"lab"),),
        received_time=RECEIVED,
    )


def _fhir(document: Any) -> list[IngestedRecord] | Rejection:
    return ingest_fhir(_raw(orjson.dumps(document)), max_payload_bytes=10_000_000)


def _hl7(message: str) -> list[IngestedRecord] | Rejection:
    raw = _raw(message.encode(), topic="ehr.raw.hl7v2")
    return ingest_hl7v2(raw, max_payload_bytes=1_000_000, zone_of=CHICAGO)


def _accepted(outcome: list[IngestedRecord] | Rejection) -> list[IngestedRecord]:
    assert isinstance(outcome, list), outcome
    for record in outcome:
        for warning in record.warnings:
            _check_warning(warning)
    return outcome


def _check_warning(warning: IngestionWarning) -> None:
    assert warning.reason_code in REASON_CODES
    assert warning.location
    assert SECRET not in warning.message and MRN not in warning.message
    assert SECRET not in warning.location and MRN not in warning.location


def _rejected(outcome: list[IngestedRecord] | Rejection) -> Rejection:
    assert isinstance(outcome, Rejection), outcome
    return outcome


def _located(record: IngestedRecord) -> list[tuple[str, str | None]]:
    return [(w.reason_code, w.location) for w in record.warnings]


def _patient(pid: str = "p1", **overrides: Any) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": pid,
        "meta": {"versionId": "1", "lastUpdated": "2024-03-01T08:00:00-05:00"},
        "identifier": [{"system": "urn:test:mrn", "value": MRN}],
        "name": [{"family": "Testperson", "given": ["Alex"]}],
        "gender": "female",
        "birthDate": "1970-05-12",
    } | overrides


def _observation(**overrides: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": "o1",
        "meta": {"versionId": "2", "lastUpdated": "2024-03-01T08:00:00-05:00"},
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "2345-7"}]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2024-03-01T07:30:00-05:00",
        "valueQuantity": {"value": 99, "unit": "mg/dL"},
    } | overrides


def _allergy(coding: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "AllergyIntolerance",
        "id": "a1",
        "patient": {"reference": "Patient/p1"},
        "code": {"coding": [coding]},
    }


def _bundle(*resources: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [{"resource": r} for r in resources],
    }


# --- FHIR: an element at fault is a warning -----------------------------------------------------


def test_a_coding_without_a_system_is_a_warning_not_a_rejection() -> None:
    """FHIR allows a Coding without a system; Concord cannot compare it, but the resource, and
    the code as sent, are kept."""
    [record] = _accepted(_fhir(_observation(code={"coding": [{"code": SECRET}]})))
    assert _located(record) == [("CODE_WITHOUT_SYSTEM", "Observation.code.coding[0]")]
    assert orjson.loads(record.payload)["code"] == {"coding": [{"code": SECRET}]}
    assert "kept" in record.warnings[0].message


def test_a_bundle_is_not_dead_lettered_for_one_coding_without_a_system() -> None:
    """The issue's 60 KB Bundle: the patient's demographics and every other fact still flow."""
    bundle = _bundle(_patient(), _allergy({"code": SECRET}), _observation())
    patient, allergy, observation = _accepted(_fhir(bundle))
    assert (patient.warnings, observation.warnings) == ((), ())
    assert _located(allergy) == [("CODE_WITHOUT_SYSTEM", "Bundle.entry[1].resource.code.coding[0]")]
    read = read_record(patient, TERMINOLOGY, ())
    assert read is not None and {d.attribute for d in read.drafts} >= {"Patient.birthDate"}


@pytest.mark.parametrize(
    ("system", "code"), [(LOINC, "2345-8"), ("http://hl7.org/fhir/sid/icd-10-cm", "50.911")]
)
def test_a_malformed_code_is_kept_unmapped_with_a_warning(system: str, code: str) -> None:
    [record] = _accepted(_fhir(_observation(code={"coding": [{"system": system, "code": code}]})))
    assert _located(record) == [("INVALID_CODE", "Observation.code.coding[0]")]
    assert code not in record.warnings[0].message
    # a code that fails its system's check is not treated as that system's code downstream
    assert TERMINOLOGY.map(system, code).mapped is False
    assert TERMINOLOGY.map(LOINC, "2345-7").mapped is True


def test_a_date_time_without_a_zone_is_left_out_with_a_warning() -> None:
    """FHIR requires the zone and Concord does not guess it: the element is left out of the
    stored resource (which stays valid R4), an emptied Period with it."""
    observation = _observation(note=[{"time": "2024-03-01T07:31", "text": "fasting"}])
    del observation["effectiveDateTime"]
    observation["effectivePeriod"] = {"start": "2024-03-01T07:30:00"}
    [record] = _accepted(_fhir(observation))
    assert sorted(_located(record)) == [
        ("DATETIME_WITHOUT_ZONE", "Observation.effectivePeriod.start"),
        ("DATETIME_WITHOUT_ZONE", "Observation.note[0].time"),
    ]
    stored = orjson.loads(record.payload)
    assert "effectivePeriod" not in stored
    assert stored["note"] == [{"text": "fasting"}]
    get_fhir_model_class("Observation").model_validate(stored)


def test_the_version_time_without_a_zone_still_rejects() -> None:
    """meta.lastUpdated is when this version became true: without it the record's versions
    cannot be ordered, so the record waits in the dead-letter topic for a fix."""
    outcome = _rejected(_fhir(_observation(meta={"lastUpdated": "2024-03-01T08:00:00"})))
    assert (outcome.reason_code, outcome.location) == (
        "DATETIME_WITHOUT_ZONE",
        "Observation.meta.lastUpdated",
    )


def test_an_unresolved_reference_beside_the_patient_is_kept_with_a_warning() -> None:
    [record] = _accepted(_fhir(_observation(specimen={"reference": "#sp1"})))
    assert _located(record) == [("UNRESOLVED_REFERENCE", "Observation.specimen.reference")]


def test_an_unresolved_patient_reference_still_rejects() -> None:
    outcome = _rejected(_fhir(_observation(subject={"reference": "#nobody"})))
    assert (outcome.reason_code, outcome.location) == (
        "UNRESOLVED_REFERENCE",
        "Observation.subject.reference",
    )


# --- FHIR: a resource type Concord does not compare is kept -------------------------------------


@pytest.mark.parametrize(
    "resource",
    [
        {
            "resourceType": "Immunization",
            "id": "i1",
            "status": "completed",
            "vaccineCode": {"coding": [{"system": "http://hl7.org/fhir/sid/cvx", "code": "140"}]},
            "patient": {"reference": "Patient/p1"},
            "occurrenceDateTime": "2024-01-05T10:00:00-05:00",
        },
        {
            "resourceType": "Procedure",
            "id": "pr1",
            "status": "completed",
            "code": {"coding": [{"code": "local-7"}]},
            "subject": {"reference": "Patient/p1"},
        },
    ],
    ids=["Immunization", "Procedure"],
)
def test_a_type_concord_does_not_compare_is_kept_not_dead_lettered(
    resource: dict[str, Any],
) -> None:
    [record] = _accepted(_fhir(resource))
    assert record.resource_type == resource["resourceType"]
    assert record.provenance.source_record_id == f"{resource['resourceType']}/{resource['id']}"
    assert record.patient_ref == "Patient/p1"
    assert record.warnings == ()  # not an error: it is counted by type, not warned about
    assert orjson.loads(record.payload) == resource
    assert read_record(record, TERMINOLOGY, ()) is None  # no fact: nothing to compare


def test_an_r4_type_that_r4b_renamed_is_kept() -> None:
    [record] = _accepted(_fhir({"resourceType": "MedicinalProduct", "id": "m1"}))
    assert record.resource_type == "MedicinalProduct"


@pytest.mark.parametrize("resource_type", ["SubscriptionTopic", SECRET, "patient"])
def test_a_resource_type_that_is_not_fhir_r4_is_still_rejected(resource_type: str) -> None:
    outcome = _rejected(_fhir({"resourceType": resource_type, "id": "x"}))
    assert outcome.reason_code == "UNSUPPORTED_RESOURCE_TYPE"
    assert SECRET not in outcome.reason


def test_a_kept_type_still_needs_an_id() -> None:
    outcome = _rejected(_fhir({"resourceType": "Immunization", "status": "completed"}))
    assert (outcome.reason_code, outcome.location) == ("MISSING_RESOURCE_ID", "Immunization.id")


def test_the_r4_type_list_is_r4b_with_its_changes_undone() -> None:
    r4b = {name for name in R4_RESOURCE_TYPES | R4B_ONLY_TYPES if _r4b_model(name)}
    assert r4b - R4_RESOURCE_TYPES == R4B_ONLY_TYPES
    renamed = {n for n in R4_RESOURCE_TYPES if n.startswith(("MedicinalProduct", "Substance"))}
    assert {name for name in R4_RESOURCE_TYPES if not _r4b_model(name)} == {
        "EffectEvidenceSynthesis",
        "RiskEvidenceSynthesis",
        *(renamed - {"Substance"}),
    }


def _r4b_model(name: str) -> bool:
    try:
        get_fhir_model_class(name)
    except (KeyError, ValueError, AttributeError, ImportError):
        return False
    return True


# --- FHIR Bundles: an entry at fault is left out ------------------------------------------------


def test_a_bundle_entry_that_breaks_fhir_is_left_out_and_the_rest_ingested() -> None:
    bundle = _bundle(_patient("a"), _patient("b", birthDate="1980-13-45"), _patient("c"))
    first, last = _accepted(_fhir(bundle))
    assert [first.provenance.source_record_id, last.provenance.source_record_id] == [
        "Patient/a",
        "Patient/c",
    ]
    # The entries left out are carried by the Bundle's first record.
    assert _located(first) == [("FHIR_INVALID", "Bundle.entry[1].resource.birthDate")]
    assert "not ingested" in first.warnings[0].message
    assert last.warnings == ()


def test_a_bundle_entry_that_names_no_patient_is_left_out() -> None:
    orphan = _observation()
    del orphan["subject"]
    first, second = _accepted(_fhir(_bundle(_patient(), orphan, _observation(id="o2"))))
    assert second.provenance.source_record_id == "Observation/o2"
    assert _located(first) == [("MISSING_PATIENT_REFERENCE", "Bundle.entry[1].resource.subject")]


def test_a_bundle_entry_whose_type_is_not_fhir_is_left_out_with_a_warning() -> None:
    [record] = _accepted(_fhir(_bundle(_patient(), {"resourceType": SECRET, "id": "x"})))
    assert _located(record) == [
        ("UNSUPPORTED_RESOURCE_TYPE", "Bundle.entry[1].resource.resourceType")
    ]


def test_a_bundle_whose_every_checked_entry_is_refused_is_dead_lettered() -> None:
    """Nothing of it could be ingested: the whole Bundle waits for a fix, with the first
    refused entry's reason and location, as before."""
    bundle = _bundle(
        {"resourceType": "Organization", "id": "org"},
        _patient("b", birthDate="1980-13-45"),
        _patient("c", gender="x"),
    )
    outcome = _rejected(_fhir(bundle))
    assert (outcome.reason_code, outcome.location) == (
        "FHIR_INVALID",
        "Bundle.entry[1].resource.birthDate",
    )


def test_a_bundle_of_types_concord_does_not_compare_is_kept_as_one_record() -> None:
    """An A40 message's Bundle (MessageHeader, Linkage, Provenance, Organizations): kept for
    provenance as one Bundle record, not dead-lettered as before."""
    bundle = _bundle(
        {"resourceType": "MessageHeader", "id": "h", "eventUri": "urn:x"},
        {"resourceType": "Linkage", "id": "l"},
        {"resourceType": "Organization", "id": "o"},
    ) | {"id": "b-1", "timestamp": "2024-03-01T08:00:00-05:00"}
    [record] = _accepted(_fhir(bundle))
    assert record.resource_type == "Bundle"
    assert record.provenance.source_record_id == "Bundle/b-1"
    assert record.provenance.event_time == datetime(2024, 3, 1, 13, 0, tzinfo=UTC)
    assert record.patient_ref is None and record.warnings == ()
    assert orjson.loads(record.payload) == bundle
    assert read_record(record, TERMINOLOGY, ()) is None


def test_a_bundle_without_an_id_is_named_by_its_content() -> None:
    bundle = _bundle({"resourceType": "Organization", "id": "o"})
    [first] = _accepted(_fhir(bundle))
    [again] = _accepted(_fhir(bundle))
    assert first.provenance.source_record_id.startswith("Bundle/")
    assert first.record_id == again.record_id


# --- HL7 v2: a field at fault is a warning ------------------------------------------------------

ADT = (
    "MSH|^~\\&|EPIC|GH|CONCORD|GH|20240301083000-0500||ADT^A08^ADT_A01|CTRL-1|P|2.5.1\r"
    "EVN|A08|20240301082500-0500\r"
    f"PID|1||{MRN}^^^GH^MR||Quorvatz^Ann||19700512|F\r"
    "AL1|1|DA|70618^Penicillin^RXNORM|SV|Hives\r"
    "DG1|1||C50.911^Malignant neoplasm of right breast^I10|||F\r"
)
ORU = (
    "MSH|^~\\&|LAB|GH|CONCORD|GH|20240301090000||ORU^R01^ORU_R01|CTRL-2|P|2.8\r"
    f"PID|1||{MRN}^^^GH^MR||Quorvatz^Ann||19700512|F\r"
    "OBR|1||ACC-9|58410-2^CBC panel^LN|||20240301070000\r"
    "OBX|1|NM|2345-7^Glucose^LN||99|mg/dL^mg/dL^UCUM|70-99|N|||F|||20240301070000\r"
    "OBX|2|ST|8251-1^Comment^LN||fasting||||||F\r"
)


def _facts(record: IngestedRecord) -> dict[str, tuple[str, ...]]:
    read = read_record(record, TERMINOLOGY, ())
    assert read is not None
    return {draft.attribute: draft.flags for draft in read.drafts}


def test_an_allergen_code_without_its_coding_system_is_a_warning_not_a_rejection() -> None:
    """The issue's ADT: one AL1 without its coding system no longer takes the patient's
    demographics and the other facts with it; the allergen is kept as a local, unmapped code."""
    [record] = _accepted(_hl7(ADT.replace("70618^Penicillin^RXNORM", f"{SECRET}^Penicillin")))
    assert _located(record) == [("CODE_WITHOUT_SYSTEM", "AL1-3.3")]
    facts = _facts(record)
    assert {"Patient.birthDate", "Patient.gender", "Patient.name"} <= facts.keys()
    assert "Condition/C50.911" in facts
    [allergy] = [flags for attribute, flags in facts.items() if SECRET in attribute]
    assert allergy == ("UNMAPPED_CODE",)


def test_an_adt_without_its_evn_segment_is_a_warning_and_msh_7_gives_the_time() -> None:
    [record] = _accepted(_hl7(ADT.replace("EVN|A08|20240301082500-0500\r", "")))
    assert _located(record) == [("HL7_INVALID", "EVN")]
    assert record.provenance.event_time == datetime(2024, 3, 1, 13, 30, tzinfo=UTC)


def test_an_unreadable_evn_field_is_a_warning_and_msh_7_gives_the_time() -> None:
    [record] = _accepted(_hl7(ADT.replace("|20240301082500-0500\r", "|yesterday\r")))
    assert _located(record) == [("HL7_INVALID", "EVN-2")]
    assert record.provenance.event_time == datetime(2024, 3, 1, 13, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("message", "code", "location", "gone"),
    [
        (ADT.replace("19700512", "1970-05-12"), "HL7_INVALID", "PID-7", "Patient.birthDate"),
        (ADT.replace("C50.911", "50.911"), "INVALID_CODE", "DG1-3.1", "Condition/C50.911"),
        (ORU.replace("||99|", "||ninety|"), "HL7_INVALID", "OBX-5", "Observation/2345-7"),
        (ORU.replace("2345-7^", "2345-8^"), "INVALID_CODE", "OBX-3.1", "Observation/2345-7"),
        (ORU.replace("ST|8251-1^", "ST|^"), "HL7_INVALID", "OBX[2]-3.1", "Observation/8251-1"),
        (ORU.replace("OBX|2|ST|", "OBX|2||"), "HL7_INVALID", "OBX[2]-2", "Observation/8251-1"),
        (ORU.replace("|fasting||||||F\r", "|fasting||||||\r"), "HL7_INVALID", "OBX[2]-11", None),
    ],
)
def test_a_field_at_fault_is_a_warning_and_the_other_facts_flow(
    message: str, code: str, location: str, gone: str | None
) -> None:
    [record] = _accepted(_hl7(message))
    assert _located(record) == [(code, location)]
    facts = _facts(record)
    assert "Patient.name" in facts
    if gone is not None:
        assert gone not in facts  # the field at fault is not read as what it claims


@pytest.mark.parametrize(
    ("message", "code", "location"),
    [
        (ADT.replace(f"{MRN}^^^GH^MR", ""), "HL7_INVALID", "PID-3"),
        (ADT.replace("PID|", "PXD|"), "HL7_INVALID", "PID"),
        (ADT.replace("82500-0500", "82500"), "HL7_TIME_ZONE_UNKNOWN", "EVN-2"),
        (ADT.replace("|CTRL-1|", "||"), "HL7_INVALID", "MSH-10"),
    ],
)
def test_what_the_whole_message_relies_on_still_rejects(
    message: str, code: str, location: str
) -> None:
    raw = _raw(message.encode(), topic="ehr.raw.hl7v2")
    outcome = _rejected(ingest_hl7v2(raw, max_payload_bytes=1_000_000))
    assert (outcome.reason_code, outcome.location) == (code, location)


# --- the public samples -------------------------------------------------------------------------


@pytest.mark.shared_data
def test_the_public_samples_are_ingested_whole_partly_or_dead_lettered() -> None:
    hl7 = sorted((SAMPLES / "hl7v2").glob("*.hl7"))
    fhir = sorted((SAMPLES / "fhir-expected").rglob("*.json"))
    if not hl7 or not fhir:
        pytest.skip(f"NOT RUN: the public samples are absent ({SAMPLES} not found)")
    zone_of = zones_from({}, "America/New_York")
    table: dict[str, collections.Counter[str]] = {}
    for label, paths in (("HL7 v2", hl7), ("FHIR", fhir)):
        counts: collections.Counter[str] = collections.Counter()
        for path in paths:
            if label == "FHIR":
                outcome = ingest_fhir(_raw(path.read_bytes()), max_payload_bytes=10**8)
            else:
                raw = _raw(path.read_bytes(), topic="ehr.raw.hl7v2")
                outcome = ingest_hl7v2(raw, max_payload_bytes=10**7, zone_of=zone_of)
            if isinstance(outcome, Rejection):
                counts[f"dead-lettered {outcome.reason_code}"] += 1
            elif any(record.warnings for record in _accepted(outcome)):
                counts["ingested with warnings"] += 1
            else:
                counts["ingested whole"] += 1
        table[label] = counts
        print(f"\n{len(paths)} {label} samples: {dict(counts.most_common())}")
    # No sample is dead-lettered any more for an element (a code without a system, a resource
    # type not compared, an entry at fault): what is left is unreadable or not ingested by type.
    element_level = {"CODE_WITHOUT_SYSTEM", "INVALID_CODE", "FHIR_INVALID"}
    for counts in table.values():
        assert not {c.removeprefix("dead-lettered ") for c in counts} & element_level, counts
    assert table["FHIR"]["ingested whole"] + table["FHIR"]["ingested with warnings"] == len(fhir)
    assert set(table["HL7 v2"]) <= {
        "ingested whole",
        "ingested with warnings",
        "dead-lettered HL7_UNSUPPORTED_MESSAGE_TYPE",
    }


# --- NUL and other control characters (issue 15) ------------------------------------------------
# PostgreSQL's text and jsonb cannot hold NUL: a name carrying one was accepted here and refused
# later by normalization's identity store and the conflicts store, so the record was lost. What
# ingestion reads is cleaned of C0 control characters (but tab, line feed, carriage return),
# with a located warning; the raw bytes, kept for provenance, are not touched.

CONTROLS = "".join(chr(c) for c in range(0x20) if chr(c) not in "\t\n\r")


def _strings(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [s for key, value in node.items() for s in (key, *_strings(value))]
    if isinstance(node, list):
        return [s for item in node for s in _strings(item)]
    return [node] if isinstance(node, str) else []


def _controls_left(record: IngestedRecord) -> set[str]:
    payload = record.payload.decode()
    text = _strings(orjson.loads(payload)) if record.format != "HL7V2" else [payload]
    return {c for s in text for c in s if c in CONTROLS}


def test_a_nul_in_a_fhir_name_is_removed_with_a_warning() -> None:
    patient = _patient(name=[{"family": "Quor\u0000vatz", "given": ["A\u0001nn\tMarie"]}])
    raw_bytes = orjson.dumps(patient)
    assert b"\\u0000" in raw_bytes
    [record] = _accepted(ingest_fhir(_raw(raw_bytes), max_payload_bytes=10_000_000))
    assert orjson.loads(record.payload)["name"] == [{"family": "Quorvatz", "given": ["Ann\tMarie"]}]
    assert _located(record) == [
        ("CONTROL_CHARACTER", "Patient.name[0].family"),
        ("CONTROL_CHARACTER", "Patient.name[0].given[0]"),
    ]
    assert "removed" in record.warnings[0].message
    # Provenance still names the bytes as sent: they are on the raw topic, unchanged.
    assert record.provenance.payload_sha256 == hashlib.sha256(raw_bytes).hexdigest()
    assert _controls_left(record) == set()
    assert _fact_values(record)["Patient.name"] == "quorvatz|ann marie"


def test_every_c0_control_but_tab_lf_and_cr_is_removed_from_fhir_strings() -> None:
    note = "".join(f"{c}x" for c in CONTROLS) + "\t\n\r"
    observation = _observation(valueString=note)
    observation.pop("valueQuantity")
    [record] = _accepted(_fhir(observation))
    assert orjson.loads(record.payload)["valueString"] == "x" * len(CONTROLS) + "\t\n\r"
    assert _located(record) == [("CONTROL_CHARACTER", "Observation.valueString")]


def test_json_short_escapes_for_controls_are_found_too() -> None:
    raw_bytes = orjson.dumps(_patient()).replace(b'"Testperson"', b'"Test\\bper\\fson"')
    [record] = _accepted(ingest_fhir(_raw(raw_bytes), max_payload_bytes=10_000_000))
    assert orjson.loads(record.payload)["name"][0]["family"] == "Testperson"
    assert _located(record) == [("CONTROL_CHARACTER", "Patient.name[0].family")]


def test_a_control_in_a_bundle_entry_warns_on_that_entrys_record() -> None:
    bundle = _bundle(_patient(), _observation(valueQuantity={"value": 99, "unit": "mg/\u0000dL"}))
    bundle["id"] = "b\u00001"
    patient, observation = _accepted(_fhir(bundle))
    assert _located(observation) == [
        ("CONTROL_CHARACTER", "Bundle.entry[1].resource.valueQuantity.unit")
    ]
    # What is outside every entry is the Bundle's, told on its first record.
    assert _located(patient) == [("CONTROL_CHARACTER", "Bundle.id")]


def test_a_fhir_document_without_escaped_controls_is_not_walked_for_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The hot path: a cheap look at the raw bytes decides; most documents have none."""

    def walked(*args: Any) -> Any:
        raise AssertionError("walked a document without control characters")

    monkeypatch.setattr("concord.ingestion.common.without_controls", walked)
    plain = _patient(name=[{"family": "Tab\tand\u00e9 new\nline", "given": ["Alex"]}])
    [record] = _accepted(_fhir(plain))
    assert record.warnings == ()


def test_an_escaped_nul_in_an_hl7_name_is_removed_with_a_warning() -> None:
    """`\\X00\\` decodes to NUL: what is read of PID-5 must not carry it."""
    [record] = _accepted(_hl7(ADT.replace("Quorvatz^Ann", "Quor\\X00\\vatz^Ann\\X0741\\")))
    assert _located(record) == [
        ("CONTROL_CHARACTER", "PID-5.1"),
        ("CONTROL_CHARACTER", "PID-5.2"),
    ]
    assert "removed" in record.warnings[0].message
    pid = er7.parse(record.payload).first("PID")
    assert pid is not None
    assert (pid.value(5, 1), pid.value(5, 2)) == ("Quorvatz", "AnnA")
    assert _fact_values(record)["Patient.name"] is not None
    assert "\x00" not in str(_fact_values(record))


def test_a_raw_nul_in_an_hl7_message_is_removed_with_a_warning() -> None:
    message = ADT.replace("Quorvatz^Ann", "Quor\x00vatz^Ann").replace("Hives", "Hi\x1bves")
    raw_bytes = message.encode()
    [record] = _accepted(_hl7(message))
    assert _located(record) == [
        ("CONTROL_CHARACTER", "PID-5.1"),
        ("CONTROL_CHARACTER", "AL1-5.1"),
    ]
    assert _controls_left(record) == set()
    assert record.provenance.payload_sha256 == hashlib.sha256(raw_bytes).hexdigest()


def test_a_control_character_in_the_header_rejects_rather_than_changing_the_id() -> None:
    """MSH is the message's identity and source: read as sent, and refused when it holds one."""
    rejection = _rejected(_hl7(ADT.replace("|CTRL-1|", "|CTRL\x01-1|")))
    assert (rejection.reason_code, rejection.location) == ("HL7_INVALID", "MSH-10")
    escaped = _accepted(_hl7(ADT.replace("|CTRL-1|", "|CTRL\\X00\\-1|")))
    assert escaped[0].provenance.source_record_id == "ADT^A08/CTRL\\X00\\-1"  # as sent


def test_hl7_tab_and_line_breaks_are_not_controls_to_remove() -> None:
    [record] = _accepted(_hl7(ADT.replace("Quorvatz^Ann", "Quor\\X09\\vatz^A\\.br\\nn")))
    assert record.warnings == ()


def test_a_nul_in_a_claim_is_removed_with_a_warning() -> None:
    line = {
        "claim_id": "CLM-1\u0000",
        "line_number": 1,
        "claim_version": "2",
        "status": "original",
        "patient": {
            "identifiers": [{"system": "urn:example:member", "value": MRN}],
            "family": "Quor\u0000vatz",
        },
        "payer": {"id": "PAYER1"},
        "service_date_from": "2024-01-02",
        "submitted_at": "2024-01-05T10:00:00Z",
        "diagnoses": [
            {"code": "E11.9", "system": "http://hl7.org/fhir/sid/icd-10-cm", "sequence": 1}
        ],
    }
    raw = _raw(orjson.dumps(line), topic="ehr.raw.claims")
    [record] = _accepted(ingest_claim(raw, max_payload_bytes=1_000_000))
    assert _located(record) == [
        ("CONTROL_CHARACTER", "Claim.claim_id"),
        ("CONTROL_CHARACTER", "Claim.patient.family"),
    ]
    assert record.provenance.source_record_id == "ClaimLine/CLM-1/1"
    assert _controls_left(record) == set()


def _fact_values(record: IngestedRecord) -> dict[str, str | None]:
    read = read_record(record, TERMINOLOGY, ())
    assert read is not None
    return {draft.attribute: draft.value for draft in read.drafts}
