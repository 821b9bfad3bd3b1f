"""Records → facts, pure: attribute keys, values in canonical units, statuses, and the same
facts from an HL7 v2 message and its FHIR twin."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from concord.events.models import IngestedRecord, Provenance
from concord.hl7v2 import er7
from concord.ingestion.codes import ICD10_CM, LOINC, RXNORM, SNOMED_CT
from concord.normalization.facts.drafts import FactDraft, to_fact
from concord.normalization.facts.fhir import fhir_drafts
from concord.normalization.facts.hl7v2 import hl7_drafts
from concord.normalization.terminology import Terminology, parse_crosswalk

CHICAGO = ZoneInfo("America/Chicago")
LOCAL_LAB = "urn:concord:hl7v2-coding-system:99LAB"
CROSSWALK = f"""# source: test
# version: 2026-12
# licence: CC0
from_system,from_code,to_system,to_code,to_display
{LOCAL_LAB},GLU,{LOINC},2345-7,Glucose
"""


@pytest.fixture(scope="module")
def terminology() -> Terminology:
    return Terminology([parse_crosswalk(CROSSWALK, origin="lab-local.csv")])


def by_attribute(drafts: list[FactDraft]) -> dict[str, FactDraft]:
    return {d.attribute: d for d in drafts}


def coding(system: str, code: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code}]}


def observation(**fields: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": coding(LOINC, "2345-7"),
        "effectiveDateTime": "2024-03-01T07:30:00-06:00",
        "valueQuantity": {"value": 99, "unit": "mg/dL", "system": "http://unitsofmeasure.org",
                          "code": "mg/dL"},
    } | fields  # fmt: skip


def test_patient_demographics(terminology: Terminology) -> None:
    patient = {
        "resourceType": "Patient",
        "birthDate": "1980-05",
        "gender": "female",
        "name": [{"use": "official", "family": "Núñez ", "given": ["Ana", "María"]}],
    }
    drafts = by_attribute(fhir_drafts(patient, terminology))
    assert drafts["Patient.birthDate"].value == "1980-05"  # the precision sent is kept
    assert drafts["Patient.gender"].value == "female"
    assert drafts["Patient.name"].value == "núñez|ana maría"


def test_a_molar_glucose_compares_with_a_mass_one(terminology: Terminology) -> None:
    mass = fhir_drafts(observation(), terminology)
    molar = fhir_drafts(observation(valueQuantity={"value": 5.5, "unit": "mmol/L"}), terminology)
    [a], [b] = mass, molar
    assert a.attribute == b.attribute == "Observation/2345-7"
    assert a.unit == b.unit == "mg/dL"
    assert a.value == "99"
    assert b.value is not None and abs(float(b.value) - 99.09) < 0.01
    assert b.original_unit == "mmol/L"
    assert a.effective is not None and a.effective.utc == datetime(2024, 3, 1, 13, 30, tzinfo=UTC)


def test_a_local_code_is_mapped_and_an_unknown_one_kept_and_flagged(
    terminology: Terminology,
) -> None:
    [mapped] = fhir_drafts(observation(code=coding(LOCAL_LAB, "GLU")), terminology)
    assert mapped.attribute == "Observation/2345-7"
    assert mapped.original_code == (LOCAL_LAB, "GLU")
    assert mapped.code is not None and mapped.code.crosswalk == "lab-local@2026-12"
    [unmapped] = fhir_drafts(observation(code=coding(LOCAL_LAB, "XYZ")), terminology)
    assert unmapped.attribute == f"Observation/{LOCAL_LAB}|XYZ"
    assert unmapped.flags == ("UNMAPPED_CODE",)


def test_a_code_without_a_system_is_kept_as_an_unmapped_code(terminology: Terminology) -> None:
    """FHIR allows a Coding without `system`: the fact is kept, keyed by its code, flagged."""
    condition = {
        "resourceType": "Condition",
        "id": "c1",
        "subject": {"reference": "Patient/p1"},
        "clinicalStatus": {"coding": [{"code": "active"}]},
        "code": {"coding": [{"code": "ASTHMA-7", "display": "Asthma"}]},
    }
    [draft] = fhir_drafts(condition, terminology)
    assert draft.attribute == "Condition/urn:concord:code-without-system|ASTHMA-7"
    assert draft.flags == ("UNMAPPED_CODE",)
    assert draft.value == "active"  # a status coding without its system is read too


def test_an_unconvertible_unit_keeps_the_value_as_sent_and_is_flagged(
    terminology: Terminology,
) -> None:
    [draft] = fhir_drafts(observation(valueQuantity={"value": 99, "unit": "furlongs"}), terminology)
    assert (draft.value, draft.unit) == ("99", "furlongs")
    assert draft.flags == ("UNIT_UNKNOWN",)


def test_statuses_become_fact_statuses(terminology: Terminology) -> None:
    [retracted] = fhir_drafts(observation(status="entered-in-error"), terminology)
    assert retracted.status == "ENTERED_IN_ERROR"
    condition = {
        "resourceType": "Condition",
        "code": coding(SNOMED_CT, "44054006"),
        "clinicalStatus": coding("http://terminology.hl7.org/CodeSystem/condition-clinical",
                                 "active"),
        "verificationStatus": coding(
            "http://terminology.hl7.org/CodeSystem/condition-ver-status", "refuted"
        ),
    }  # fmt: skip
    [refuted] = fhir_drafts(condition, terminology)
    assert (refuted.attribute, refuted.value, refuted.status) == (
        "Condition/44054006",
        "active",
        "REFUTED",
    )


def test_components_are_facts_of_their_own(terminology: Terminology) -> None:
    bp = observation(
        code=coding(LOINC, "85354-9"),
        valueQuantity=None,
        component=[
            {"code": coding(LOINC, "8480-6"), "valueQuantity": {"value": 120, "unit": "mm[Hg]"}},
            {"code": coding(LOINC, "8462-4"), "valueQuantity": {"value": 80, "unit": "mm[Hg]"}},
        ],
    )
    drafts = by_attribute(fhir_drafts(bp, terminology))
    assert set(drafts) == {"Observation/8480-6", "Observation/8462-4"}
    assert drafts["Observation/8480-6"].unit == "mm[Hg]"


def test_a_cancer_diagnosis_is_oncology_with_its_stage(terminology: Terminology) -> None:
    condition = {
        "resourceType": "Condition",
        "code": {"coding": [{"system": ICD10_CM, "code": "C50.911"}]},
        "clinicalStatus": coding("x", "active"),
        "stage": [{"summary": coding(SNOMED_CT, "261640009")}],
    }
    drafts = by_attribute(fhir_drafts(condition, terminology))
    assert drafts["Condition/C50.911"].attribute_class == "ONCOLOGY"
    assert drafts["Condition/C50.911/stage"].value == f"{SNOMED_CT}|261640009"


def test_a_medication_and_its_dose_in_milligrams(terminology: Terminology) -> None:
    statement = {
        "resourceType": "MedicationStatement",
        "status": "active",
        "medicationReference": {"reference": "#m1"},
        "contained": [{"resourceType": "Medication", "id": "m1", "code": coding(RXNORM, "6809")}],
        "dosage": [{"doseAndRate": [{"doseQuantity": {"value": 0.5, "unit": "g"}}]}],
    }
    drafts = by_attribute(fhir_drafts(statement, terminology))
    assert drafts["Medication/6809"].value == "active"
    assert (drafts["Medication/6809/dose"].value, drafts["Medication/6809/dose"].unit) == (
        "500",
        "mg",
    )


ADT = (
    "MSH|^~\\&|EPIC|GH|CONCORD|GH|20240301083000-0500||ADT^A08^ADT_A01|CTRL-1|P|2.5.1\r"
    "EVN|A08|20240301082500-0500\r"
    "PID|1||MRN-1^^^GH^MR||Núñez^Ana^María^^^^L||198005|F\r"
    "AL1|1|DA|70618^Penicillin^RXNORM|SV|Hives\r"
    "DG1|1||C50.911^Malignant neoplasm^I10|||F\r"
)
ORU = (
    "MSH|^~\\&|LAB|GH|CONCORD|GH|20240301090000||ORU^R01^ORU_R01|CTRL-2|P|2.8\r"
    "PID|1||MRN-1^^^GH^MR||Núñez^Ana||19800512|F\r"
    "OBR|1||ACC-9|58410-2^CBC panel^LN|||20240301073000\r"
    "OBX|1|NM|GLU^Glucose^99LAB||5.5|mmol/L|||||F\r"
    "OBX|2|NM|2160-0^Creatinine^LN||1.1|mg/dL|||||W\r"
    "OBX|3|SN|2345-7^Glucose^LN||>^400|mg/dL|||||F\r"
    "OBX|4|RP|11529-5^Report^LN||https://example.org/r||||||F\r"
)


def test_hl7_demographics_match_the_fhir_patient(terminology: Terminology) -> None:
    drafts = by_attribute(hl7_drafts(er7.parse(ADT), terminology, None))
    assert drafts["Patient.birthDate"].value == "1980-05"
    assert drafts["Patient.gender"].value == "female"
    assert drafts["Patient.name"].value == "núñez|ana maría"
    assert drafts["AllergyIntolerance/70618"].value == "active"
    assert drafts["Condition/C50.911"].attribute_class == "ONCOLOGY"


def test_hl7_results_in_canonical_units_with_their_status(terminology: Terminology) -> None:
    drafts = by_attribute(hl7_drafts(er7.parse(ORU), terminology, CHICAGO))
    glucose = drafts["Observation/2345-7"]  # the local code, mapped; the SN ">400" skipped
    assert glucose.unit == "mg/dL" and glucose.value is not None
    assert abs(float(glucose.value) - 99.09) < 0.01
    # No OBX-14: the specimen time from OBR-7, in the source's zone.
    assert glucose.effective is not None
    assert glucose.effective.utc == datetime(2024, 3, 1, 13, 30, tzinfo=UTC)
    assert drafts["Observation/2160-0"].status == "ENTERED_IN_ERROR"
    assert "Observation/11529-5" not in drafts  # a pointer asserts nothing


def test_hl7_and_fhir_give_the_same_fact_for_the_same_result(terminology: Terminology) -> None:
    [fhir] = fhir_drafts(observation(valueQuantity={"value": 5.5, "unit": "mmol/L"}), terminology)
    hl7 = by_attribute(hl7_drafts(er7.parse(ORU), terminology, CHICAGO))["Observation/2345-7"]
    assert (fhir.attribute, fhir.value, fhir.unit, fhir.status) == (
        hl7.attribute,
        hl7.value,
        hl7.unit,
        hl7.status,
    )


def _record() -> IngestedRecord:
    moment = datetime(2024, 3, 1, tzinfo=UTC)
    return IngestedRecord(
        record_id="rec-1",
        format="FHIR_R4",
        resource_type="Observation",
        payload=b"{}",
        provenance=Provenance(
            source_system="lab",
            source_record_id="Observation/o1",
            event_time=moment,
            received_time=moment,
            raw_topic="ehr.raw.fhir",
            raw_partition=0,
            raw_offset=7,
            payload_sha256="ab" * 32,
        ),
    )


def test_facts_are_deterministic_and_keep_the_chain(terminology: Terminology) -> None:
    [draft] = fhir_drafts(observation(code=coding(LOCAL_LAB, "GLU")), terminology)
    first = to_fact(draft, patient_id="E-1", record=_record(), extra_flags=("PROVISIONAL_PATIENT",))
    again = to_fact(draft, patient_id="E-1", record=_record(), extra_flags=("PROVISIONAL_PATIENT",))
    assert first == again
    assert first.record_id == "rec-1" and first.provenance.raw_offset == 7
    assert (first.original_code_system, first.original_code) == (LOCAL_LAB, "GLU")
    assert (first.code_system, first.code) == (LOINC, "2345-7")
    assert first.effective_text == "2024-03-01T07:30:00-06:00"
    assert first.effective_precision == "second" and first.effective_offset_minutes == -360
    assert first.flags == ("PROVISIONAL_PATIENT",)


def test_a_molar_loinc_term_meets_its_mass_twin() -> None:
    """An SI lab sends glucose as 14749-6 in mmol/L, a conventional one as 2345-7 in mg/dL:
    one attribute, one unit, and the code as sent is kept."""
    terminology = Terminology.load()
    [si] = fhir_drafts(
        observation(code=coding(LOINC, "14749-6"), valueQuantity={"value": 5.5, "unit": "mmol/L"}),
        terminology,
    )
    [conventional] = fhir_drafts(observation(), terminology)
    assert si.attribute == conventional.attribute == "Observation/2345-7"
    assert si.unit == conventional.unit == "mg/dL"
    assert si.original_code == (LOINC, "14749-6")
    assert si.code is not None and si.code.crosswalk == "loinc-molar-mass@2026-12-01"


def test_a_snomed_disorder_and_its_icd10_code_key_one_condition() -> None:
    """The packaged crosswalk keys a SNOMED CT disorder by its ICD-10-CM code, so that a
    source coding SNOMED CT and one coding ICD-10-CM compare the same condition."""
    packaged = Terminology.load()
    keys = {}
    for system, code in ((SNOMED_CT, "44054006"), (ICD10_CM, "E11.9")):
        condition = {"resourceType": "Condition", "code": coding(system, code)}
        [draft] = fhir_drafts(condition, packaged)
        keys[system] = (draft.attribute, draft.attribute_class, draft.original_code)
    assert keys[SNOMED_CT][:2] == keys[ICD10_CM][:2] == ("Condition/E11.9", "CONDITION")
    assert keys[SNOMED_CT][2] == (SNOMED_CT, "44054006")  # what the source sent is kept
    unknown = {"resourceType": "Condition", "code": coding(SNOMED_CT, "73211009")}
    [draft] = fhir_drafts(unknown, packaged)
    assert draft.attribute == "Condition/73211009"  # no row: keyed as sent


# A pathology narrative as laboratories send it: one observation identifier, one OBX per
# line. Lines 2 and 3 of the final diagnosis are sent out of set-id order on purpose (the
# receiver orders by OBX-1); OBX-4 sub-id 2 is a second specimen's diagnosis.
PATHOLOGY_ORU = (
    "MSH|^~\\&|PATH|HOSP|CONCORD|HOSP|20240301090000||ORU^R01|P-1|P|2.5.1\r"
    "PID|1||MRN-9^^^HOSP^MR||Rivera^Ana||19700101|F\r"
    "OBR|1||S-24-1|22034-3^Pathology report^LN|||20240301073000\r"
    "OBX|1|TX|22637-3^Final diagnosis^LN|1|Left breast, core biopsy:||||||F\r"
    "OBX|3|TX|22637-3^Final diagnosis^LN|1|Metastatic carcinoma in 2 of 14 lymph nodes.||||||F\r"
    "OBX|2|TX|22637-3^Final diagnosis^LN|1|Invasive ductal carcinoma, grade 2.||||||F\r"
    "OBX|4|TX|22637-3^Final diagnosis^LN|2|Right breast: benign breast tissue.||||||F\r"
    "OBX|5|FT|22638-1^Comment^LN||ER positive (95%).\\.br\\HER2 2+ by IHC.||||||F\r"
)


def test_a_multi_line_text_result_is_one_fact_of_all_its_lines_in_set_id_order(
    terminology: Terminology,
) -> None:
    """Issue 18: every OBX TX line of one observation got the same fact id and the store
    kept the first line, so the report's final diagnosis vanished."""
    drafts = [
        d for d in hl7_drafts(er7.parse(PATHOLOGY_ORU), terminology, None)
        if d.attribute == "Observation/22637-3"
    ]  # fmt: skip
    record = _record()
    facts = {to_fact(d, patient_id="E-1", record=record).fact_id: d for d in drafts}
    # Two observations (sub-ids 1 and 2), each one fact with a fact id of its own.
    assert len(drafts) == 2 and len(facts) == 2
    first, second = drafts
    assert first.value == (
        "left breast, core biopsy: invasive ductal carcinoma, grade 2. "
        "metastatic carcinoma in 2 of 14 lymph nodes."
    )
    assert second.value == "right breast: benign breast tissue."
    comment = by_attribute(hl7_drafts(er7.parse(PATHOLOGY_ORU), terminology, None))
    assert comment["Observation/22638-1"].value == "er positive (95%). her2 2+ by ihc."
