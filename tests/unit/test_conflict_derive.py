"""Derived attributes, pure: a claim's metastasis code and an EHR's stage imply metastatic
status, so that the two can disagree."""

from __future__ import annotations

from datetime import UTC, datetime
from importlib import resources

import orjson
import pytest
from pydantic import ValidationError

from concord.conflicts.derive import Derivation, FactPattern, derive
from concord.conflicts.policy import DEFAULT_POLICY
from concord.events.models import ClinicalFact, FactStatus, IngestedRecord, Provenance
from concord.normalization.facts.claims import claim_drafts
from concord.normalization.facts.drafts import FactDraft, to_fact
from concord.normalization.facts.fhir import fhir_drafts
from concord.normalization.terminology import Terminology

T0 = datetime(2026, 6, 1, tzinfo=UTC)
ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"
SCT = "http://snomed.info/sct"
METASTATIC = (
    Derivation(
        attribute="Oncology.metastatic",
        value="true",
        when=(
            FactPattern(attribute="Condition/C7[7-9]*", values=("active",)),
            FactPattern(attribute="Condition/*/stage", values=(f"{SCT}|258228008",)),
        ),
    ),
    Derivation(
        attribute="Oncology.metastatic",
        value="false",
        when=(
            FactPattern(
                attribute="Condition/*/stage",
                values=(f"{SCT}|258215001", f"{SCT}|258219007", f"{SCT}|258224005"),
            ),
        ),
    ),
    Derivation(
        attribute="Oncology.stageGroup",
        value_map={f"{SCT}|258215001": "I", f"{SCT}|258228008": "IV"},
        when=(FactPattern(attribute="Condition/*/stage"),),
    ),
)


def _fact(attribute: str, value: str, status: FactStatus = "ASSERTED") -> ClinicalFact:
    return ClinicalFact(
        fact_id=f"{attribute}={value}",
        patient_id="E1",
        attribute=attribute,
        attribute_class="ONCOLOGY",
        value=value,
        status=status,
        subject="Patient/1",
        provenance=Provenance(
            source_system="claims",
            source_record_id="c",
            event_time=T0,
            received_time=T0,
            raw_topic="ehr.raw.claims",
            raw_partition=0,
            raw_offset=0,
            payload_sha256="00" * 32,
        ),
    )


def test_a_secondary_neoplasm_code_implies_metastatic() -> None:
    claim = _fact("Condition/C78.00", "active")
    [derived] = derive(claim, METASTATIC)
    assert (derived.attribute, derived.value, derived.status) == (
        "Oncology.metastatic", "true", "ASSERTED",
    )  # fmt: skip
    # It speaks for the same source, patient, subject and moment as the claim.
    assert derived.provenance == claim.provenance
    assert (derived.patient_id, derived.subject) == ("E1", "Patient/1")
    assert derived.fact_id != claim.fact_id
    assert derive(claim, METASTATIC) == [derived]  # deterministic: redelivery adds nothing


def test_stage_one_implies_not_metastatic_and_its_stage_group() -> None:
    staged = _fact(f"Condition/{SCT}|254637007/stage", f"{SCT}|258215001")
    derived = {d.attribute: d.value for d in derive(staged, METASTATIC)}
    assert derived == {"Oncology.metastatic": "false", "Oncology.stageGroup": "I"}


def test_a_resolved_or_unrelated_condition_implies_nothing() -> None:
    assert derive(_fact("Condition/C78.00", "resolved"), METASTATIC) == []
    assert derive(_fact("Condition/C34.90", "active"), METASTATIC) == []


def test_an_unmapped_stage_implies_no_stage_group() -> None:
    staged = _fact(f"Condition/{SCT}|254637007/stage", f"{SCT}|000000")
    assert derive(staged, METASTATIC) == []


def test_a_withdrawn_fact_withdraws_what_it_implied() -> None:
    withdrawn = _fact("Condition/C79.51", "active", "ENTERED_IN_ERROR")
    [derived] = derive(withdrawn, METASTATIC)
    assert derived.status == "ENTERED_IN_ERROR"


def test_a_derivation_needs_exactly_one_way_to_its_value() -> None:
    with pytest.raises(ValidationError, match="either `value` or `value_map`"):
        Derivation(attribute="x", when=(FactPattern(attribute="y"),))
    with pytest.raises(ValidationError, match="either `value` or `value_map`"):
        Derivation(
            attribute="x", value="1", value_map={"a": "b"}, when=(FactPattern(attribute="y"),)
        )


# --- the built-in policy on facts as normalization makes them -------------------------------


def _normalized(drafts: list[FactDraft], source: str) -> list[ClinicalFact]:
    record = _fact("x", "y").model_copy(update={"record_id": f"{source}-record"})
    provenance = record.provenance.model_copy(update={"source_system": source})
    ingested = IngestedRecord(
        record_id=f"{source}-record",
        format="FHIR_R4",
        resource_type="Observation",
        payload=b"{}",
        provenance=provenance,
    )
    return [to_fact(d, patient_id="E1", record=ingested, subject="Patient/1") for d in drafts]


def _derived(facts: list[ClinicalFact]) -> dict[str, str | None]:
    return {d.attribute: d.value for f in facts for d in derive(f, DEFAULT_POLICY.derived)}


def test_the_built_in_policy_derives_from_a_normalized_claim_line() -> None:
    line = orjson.loads(
        resources.files("concord.demo").joinpath("claims-sample.ndjson").read_text().splitlines()[0]
    )
    line["diagnoses"].append({"code": "Z17.1", "system": ICD10, "sequence": 4})
    facts = _normalized(list(claim_drafts(line, Terminology.load())), "payer")
    assert _derived(facts) == {"Oncology.metastatic": "true", "Oncology.biomarker/ER": "negative"}


def test_the_built_in_policy_derives_receptor_status_from_a_normalized_pathology_result() -> None:
    observation = {
        "resourceType": "Observation",
        "id": "er-1",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "16112-5"}]},
        "subject": {"reference": "Patient/1"},
        "effectiveDateTime": "2026-05-01T10:00:00Z",
        "valueCodeableConcept": {"coding": [{"system": SCT, "code": "10828004"}]},
    }
    facts = _normalized(list(fhir_drafts(observation, Terminology.load())), "pathology")
    assert _derived(facts) == {"Oncology.biomarker/ER": "positive"}
