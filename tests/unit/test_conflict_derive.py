"""Derived attributes, pure: a claim's metastasis code and an EHR's stage imply metastatic
status, so that the two can disagree; diagnoses imply the primary site, and pathology results
biomarker status."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from importlib import resources

import orjson
import pytest
from pydantic import ValidationError

from concord.conflicts.derive import Derivation, FactPattern, derive
from concord.conflicts.policy import DEFAULT_POLICY
from concord.conflicts.rules import AttributeState, apply_fact, evaluate
from concord.events.models import (
    ClinicalFact,
    ConflictEvent,
    FactStatus,
    IngestedRecord,
    Provenance,
)
from concord.normalization.facts.claims import claim_drafts
from concord.normalization.facts.drafts import FactDraft, to_fact
from concord.normalization.facts.fhir import fhir_drafts
from concord.normalization.terminology import Terminology

T0 = datetime(2026, 6, 1, tzinfo=UTC)
ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"
SCT = "http://snomed.info/sct"
LOINC_ANSWER = "http://loinc.org"
CLINICAL_STATUS = "http://terminology.hl7.org/CodeSystem/condition-clinical"
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


def test_a_reloaded_policy_derives_by_its_own_patterns_not_the_last_ones() -> None:
    # derive() remembers, per derivation list, which derivations an attribute key can match;
    # a reload brings a new list, possibly with the same attribute keys and other patterns.
    claim = _fact("Condition/C78.00", "active")
    narrowed = (
        METASTATIC[0].model_copy(update={"when": (FactPattern(attribute="Condition/C79*"),)}),
    )
    assert [d.value for d in derive(claim, METASTATIC)] == ["true"]
    assert derive(claim, narrowed) == []
    assert [d.value for d in derive(claim, METASTATIC)] == ["true"]
    assert [d.value for d in derive(claim, list(METASTATIC))] == ["true"]


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
    # C50.911 (breast), C78.00 (secondary, lung) and the added Z17.1.
    assert _derived(facts) == {
        "Oncology.primarySite": "C50",
        "Oncology.metastatic": "true",
        "Oncology.biomarker/ER": "negative",
    }


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


def test_the_built_in_policy_derives_the_primary_site_from_a_normalized_snomed_condition() -> None:
    condition = {
        "resourceType": "Condition",
        "id": "dx-1",
        "clinicalStatus": {"coding": [{"system": CLINICAL_STATUS, "code": "active"}]},
        "code": {"coding": [{"system": SCT, "code": "372137005"}]},  # primary, breast
        "subject": {"reference": "Patient/1"},
        "onsetDateTime": "2026-05-01T10:00:00Z",
    }
    facts = _normalized(list(fhir_drafts(condition, Terminology.load())), "hospital-ehr")
    assert _derived(facts) == {"Oncology.primarySite": "C50"}


def test_the_built_in_policy_derives_egfr_status_from_a_normalized_molecular_result() -> None:
    observation = {
        "resourceType": "Observation",
        "id": "egfr-1",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "21665-5"}]},
        "subject": {"reference": "Patient/1"},
        "effectiveDateTime": "2026-05-01T10:00:00Z",
        "valueCodeableConcept": {"coding": [{"system": SCT, "code": "260373001"}]},  # detected
    }
    facts = _normalized(list(fhir_drafts(observation, Terminology.load())), "lab-system")
    assert _derived(facts) == {"Oncology.biomarker/EGFR": "positive"}


# --- primary site and biomarkers in the built-in policy -------------------------------------


def _built_in(fact: ClinicalFact) -> dict[str, str | None]:
    return _derived([fact])


@pytest.mark.parametrize(
    ("attribute", "site"),
    [
        ("Condition/C50.911", "C50"),  # ICD-10-CM, right female breast
        ("Condition/C50911", "C50"),  # as claims often send it, without the dot
        ("Condition/C34.90", "C34"),
        ("Condition/C18.7", "C18"),
        ("Condition/C20", "C20"),
        ("Condition/C61", "C61"),
        ("Condition/372137005", "C50"),  # SNOMED CT |Primary malignant neoplasm of breast|
        ("Condition/93880001", "C34"),  # |Primary malignant neoplasm of lung|
        ("Condition/93761005", "C18"),  # |Primary malignant neoplasm of colon|
        ("Condition/93974005", "C61"),  # |Primary malignant neoplasm of prostate|
    ],
)
def test_an_active_primary_cancer_diagnosis_implies_its_site(attribute: str, site: str) -> None:
    assert _built_in(_fact(attribute, "active")) == {"Oncology.primarySite": site}
    assert _built_in(_fact(attribute, "recurrence")) == {"Oncology.primarySite": site}


@pytest.mark.parametrize(
    "attribute",
    [
        "Condition/C78.00",  # secondary malignant neoplasm of lung
        "Condition/C79.51",  # secondary malignant neoplasm of bone
        "Condition/C77.3",  # secondary malignant neoplasm of axillary lymph nodes
        "Condition/D05.11",  # intraductal carcinoma in situ of right breast
        "Condition/D02.20",  # carcinoma in situ of unspecified bronchus and lung
        "Condition/94391008",  # SNOMED CT |Secondary malignant neoplasm of lung|
        "Condition/92649001",  # |Carcinoma in situ of lung|
        "Condition/254837009",  # |Malignant neoplasm of breast|: also holds secondaries
    ],
)
def test_secondary_and_in_situ_neoplasms_imply_no_primary_site(attribute: str) -> None:
    assert "Oncology.primarySite" not in _built_in(_fact(attribute, "active"))


def test_a_resolved_primary_cancer_or_a_stage_implies_no_primary_site() -> None:
    assert _built_in(_fact("Condition/C50.911", "resolved")) == {}
    staged = _fact("Condition/C50.911/stage", f"{SCT}|258219007")
    assert _built_in(staged) == {"Oncology.metastatic": "false", "Oncology.stageGroup": "2"}


@pytest.mark.parametrize(
    ("loinc", "value", "attribute", "status"),
    [
        ("21665-5", f"{SCT}|260373001", "Oncology.biomarker/EGFR", "positive"),  # detected
        ("21665-5", f"{SCT}|260415000", "Oncology.biomarker/EGFR", "negative"),  # not detected
        ("78205-2", f"{SCT}|10828004", "Oncology.biomarker/ALK", "positive"),
        ("78205-2", f"{SCT}|260415000", "Oncology.biomarker/ALK", "negative"),
        ("83052-1", f"{SCT}|260385009", "Oncology.biomarker/PD-L1", "negative"),  # 22C3
        ("83055-4", f"{LOINC_ANSWER}|LA6576-8", "Oncology.biomarker/PD-L1", "positive"),  # 28-8
        ("83057-0", f"{LOINC_ANSWER}|LA6577-6", "Oncology.biomarker/PD-L1", "negative"),  # SP142
    ],
)
def test_a_molecular_or_immunostain_result_implies_biomarker_status(
    loinc: str, value: str, attribute: str, status: str
) -> None:
    result = _fact(f"Observation/{loinc}", value).model_copy(
        update={"attribute_class": "LABORATORY"}
    )
    assert _built_in(result) == {attribute: status}


def test_an_equivocal_biomarker_result_implies_no_status() -> None:
    equivocal = _fact("Observation/83052-1", f"{LOINC_ANSWER}|LA11884-6")
    assert _built_in(equivocal) == {}


# --- what the derived attributes raise, compared by the built-in policy ----------------------


def _said(source: str, attribute: str, value: str) -> ClinicalFact:
    fact = _fact(attribute, value)
    return fact.model_copy(
        update={
            "fact_id": f"{source}:{attribute}={value}",
            "provenance": fact.provenance.model_copy(update={"source_system": source}),
        }
    )


def _compared(attribute: str, *facts: ClinicalFact) -> tuple[AttributeState, ConflictEvent | None]:
    """Each source's derived assertion on `attribute`, and the conflict the policy raises."""
    state = AttributeState("E1", attribute, "ONCOLOGY")
    for fact in facts:
        for derived in derive(fact, DEFAULT_POLICY.derived):
            if derived.attribute == attribute:
                apply_fact(state, derived)
    return state, evaluate(state, DEFAULT_POLICY, now=T0, trigger_received_time=T0)


def test_two_sources_naming_different_primary_cancers_conflict() -> None:
    _, event = _compared(
        "Oncology.primarySite",
        _said("payer", "Condition/C50.911", "active"),  # breast, ICD-10-CM
        _said("hospital-ehr", "Condition/93880001", "active"),  # lung, SNOMED CT
    )
    assert event is not None
    assert (event.kind, event.severity) == ("OPENED", "HIGH")
    assert {a.source_system: a.value for a in event.assertions} == {
        "payer": "C50",
        "hospital-ehr": "C34",
    }
    assert event.proposed_value == "C34"  # the hospital EHR ranks first


def test_the_same_primary_coded_icd10_at_one_source_and_snomed_at_another_agrees() -> None:
    state, event = _compared(
        "Oncology.primarySite",
        _said("payer", "Condition/C50.911", "active"),
        _said("hospital-ehr", "Condition/372137005", "active"),
    )
    assert {s: a.value for s, a in state.assertions.items()} == {
        "payer": "C50",
        "hospital-ehr": "C50",
    }
    assert event is None


def test_egfr_detected_at_one_source_and_not_detected_at_another_conflict() -> None:
    _, event = _compared(
        "Oncology.biomarker/EGFR",
        _said("lab-system", "Observation/21665-5", f"{SCT}|260373001"),
        _said("clinic-ehr", "Observation/21665-5", f"{SCT}|260415000"),
    )
    assert event is not None
    assert {a.source_system: a.value for a in event.assertions} == {
        "lab-system": "positive",
        "clinic-ehr": "negative",
    }


AJCC = "http://cancerstaging.org"


@pytest.mark.parametrize(
    ("loinc", "category", "metastatic"),
    [
        ("21907-1", "cM1", "true"),  # clinical
        ("21901-4", "pM1a", "true"),  # pathological
        ("21907-1", "cM0", "false"),
        ("21901-4", "pM0(i+)", "false"),  # tumour cells found, no distant metastasis
    ],
)
def test_a_tnm_distant_metastases_category_implies_metastatic_status(
    loinc: str, category: str, metastatic: str
) -> None:
    observation = {
        "resourceType": "Observation",
        "id": "tnm-m",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": loinc}]},
        "subject": {"reference": "Patient/1"},
        "effectiveDateTime": "2026-05-01T10:00:00Z",
        "valueCodeableConcept": {"coding": [{"system": AJCC, "code": category}]},
    }
    facts = _normalized(list(fhir_drafts(observation, Terminology.load())), "registry")
    assert _derived(facts) == {"Oncology.metastatic": metastatic}


def test_a_tnm_m1_and_a_stage_one_condition_conflict() -> None:
    _, event = _compared(
        "Oncology.metastatic",
        _said("tumor-registry", "Observation/21907-1", f"{AJCC}|cM1"),
        _said("hospital-ehr", "Condition/C50.911/stage", f"{SCT}|258215001"),
    )
    assert event is not None and event.kind == "OPENED"
    assert {a.source_system: a.value for a in event.assertions} == {
        "tumor-registry": "true",
        "hospital-ehr": "false",
    }


def test_a_dotless_icd10cm_claim_code_derives_exactly_what_its_dotted_form_does() -> None:
    """X12 claims carry ICD-10-CM without the dot (C50911, Z171): the same facts, the same
    derivations as C50.911 and Z17.1."""
    line = orjson.loads(
        resources.files("concord.demo").joinpath("claims-sample.ndjson").read_text().splitlines()[0]
    )
    dotted = {**line, "diagnoses": [*line["diagnoses"], {"code": "Z17.1", "system": ICD10}]}
    dotless = {
        **dotted,
        "diagnoses": [{**d, "code": d["code"].replace(".", "")} for d in dotted["diagnoses"]],
    }
    assert {d["code"] for d in dotless["diagnoses"]} >= {"C50911", "Z171", "C7800"}
    terminology = Terminology.load()
    facts = {
        form: _normalized(list(claim_drafts(claim, terminology)), "payer")
        for form, claim in (("dotted", dotted), ("dotless", dotless))
    }
    assert [f.attribute for f in facts["dotless"]] == [f.attribute for f in facts["dotted"]]
    assert "Condition/C50.911" in {f.attribute for f in facts["dotless"]}
    assert (
        _derived(facts["dotless"])
        == _derived(facts["dotted"])
        == {
            "Oncology.primarySite": "C50",
            "Oncology.metastatic": "true",
            "Oncology.biomarker/ER": "negative",
        }
    )


@pytest.mark.parametrize("code", ["C77.3", "C77.9", "C77.2"])
def test_a_lymph_node_secondary_alone_never_derives_metastatic(code: str) -> None:
    """C77: AJCC stages regional nodes as N, not M; a stage III patient's claim carries it."""
    derived = {d.attribute: d.value for d in derive(_fact(f"Condition/{code}", "active"),
                                                    DEFAULT_POLICY.derived)}  # fmt: skip
    assert derived == {"Oncology.nodalInvolvement": "true"}


def test_a_c77_claim_and_a_stage_three_condition_raise_no_metastatic_conflict() -> None:
    state, event = _compared(
        "Oncology.metastatic",
        _said("payer", "Condition/C77.3", "active"),  # axillary nodes: N, not M
        _said("hospital-ehr", "Condition/C50.911/stage", f"{SCT}|258224005"),  # stage III
    )
    assert {s: a.value for s, a in state.assertions.items()} == {"hospital-ehr": "false"}
    assert event is None


def test_equal_answers_in_loinc_and_snomed_for_one_specimen_raise_nothing() -> None:
    """A pathology lab answers LOINC LA6576-8 Positive, the EHR holds SNOMED CT 10828004: the
    same result of the same specimen, so neither the result nor the derived status conflicts."""

    def pd_l1(source: str, answer: dict[str, str]) -> list[ClinicalFact]:
        observation = {
            "resourceType": "Observation",
            "id": f"pdl1-{source}",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "83052-1"}]},
            "subject": {"reference": "Patient/1"},
            "effectiveDateTime": "2026-05-01T10:00:00Z",
            "valueCodeableConcept": {"coding": [answer]},
        }
        facts = _normalized(list(fhir_drafts(observation, Terminology.load())), source)
        return [
            f.model_copy(update={"provenance": f.provenance.model_copy(
                update={"source_system": source})})
            for f in facts
        ]  # fmt: skip

    lab = pd_l1("pathology-lab", {"system": LOINC_ANSWER, "code": "LA6576-8"})
    ehr = pd_l1("hospital-ehr", {"system": SCT, "code": "10828004"})
    assert [f.value for f in lab] == [f.value for f in ehr] == [f"{SCT}|10828004"]
    state = AttributeState("E1", "Observation/83052-1", "LABORATORY")
    for fact in [*lab, *ehr]:
        apply_fact(state, fact)
    assert len(state.assertions) == 2
    assert evaluate(state, DEFAULT_POLICY, now=T0, trigger_received_time=T0) is None
    _, event = _compared("Oncology.biomarker/PD-L1", *lab, *ehr)
    assert event is None
    assert _derived(lab) == _derived(ehr) == {"Oncology.biomarker/PD-L1": "positive"}


def test_unranked_sources_propose_the_pathology_report_over_the_chart_and_the_claim() -> None:
    """The report: a site that had not named its sources in source_rank saw the payer's value
    proposed over the pathology report's."""
    path = _said("path-lab", "Observation/21907-1", f"{AJCC}|cM0").model_copy(
        update={"provenance": _said("path-lab", "x", "y").provenance.model_copy(
            update={"source_record_id": "ORU^R01/88231", "raw_topic": "ehr.raw.hl7v2"})}
    )  # fmt: skip
    claim = _said("acme-health-plan", "Condition/C78.00", "active").model_copy(
        update={"provenance": _said("acme-health-plan", "x", "y").provenance.model_copy(
            update={"source_record_id": "Claim/77/1", "raw_topic": "ehr.raw.claims",
                    "event_time": T0 + timedelta(days=30)})}
    )  # fmt: skip
    _, event = _compared("Oncology.metastatic", path, claim)
    assert event is not None
    assert event.proposed_value == "false"
    assert event.proposed_reason == ("path-lab's pathology or laboratory result outranks a claim")


def test_a_ranked_source_still_outranks_better_evidence() -> None:
    """The site's own ranking decides first: the built-in policy ranks hospital-ehr first."""
    path = _said("path-lab", "Observation/21907-1", f"{AJCC}|cM0").model_copy(
        update={"provenance": _said("path-lab", "x", "y").provenance.model_copy(
            update={"source_record_id": "Observation/9"})}
    )  # fmt: skip
    chart = _said("hospital-ehr", "Condition/C50.911/stage", f"{SCT}|258228008")
    _, event = _compared("Oncology.metastatic", path, chart)
    assert event is not None and event.proposed_value == "true"
    assert event.proposed_reason == "hospital-ehr ranks highest among the disagreeing sources"


@pytest.mark.parametrize(
    ("code", "metastatic", "group"),
    [
        ("258215001", "false", "1"),  # Stage 1, as a stage group Observation carries it
        ("1222724007", "false", "1"),  # AJCC stage IA
        ("1222766008", "false", "2"),  # AJCC stage IIA
        ("1222769001", "false", "2"),  # AJCC stage IIB
        ("1222728005", "false", "1"),  # AJCC stage IB
        ("1222802001", "false", "3"),  # AJCC stage IIIA
        ("1222805004", "false", "3"),  # AJCC stage IIIB
        ("1222806003", "false", "3"),  # AJCC stage IIIC
        ("258228008", "true", "4"),  # Stage 4
    ],
)
@pytest.mark.parametrize("loinc", ["21908-9", "21902-2"])
def test_a_stage_group_observation_implies_its_group_and_metastatic_status(
    loinc: str, code: str, metastatic: str, group: str
) -> None:
    """Synthea and mCODE state the stage as an Observation, not on the Condition."""
    derived = _built_in(_fact(f"Observation/{loinc}", f"{SCT}|{code}"))
    assert derived == {"Oncology.metastatic": metastatic, "Oncology.stageGroup": group}


@pytest.mark.parametrize(("code", "metastatic"), [("1229903009", "true"), ("1229901006", "false")])
def test_a_snomed_coded_distant_metastases_category_implies_metastatic_status(
    code: str, metastatic: str
) -> None:
    """SNOMED CT's AJCC qualifiers cM1 / cM0, as Synthea codes TNM M."""
    assert _built_in(_fact("Observation/21907-1", f"{SCT}|{code}")) == {
        "Oncology.metastatic": metastatic
    }


@pytest.mark.parametrize(
    ("code", "metastatic", "group"),
    [
        ("424132000", "false", "1"),  # Non-small cell carcinoma of lung, TNM stage 1
        ("425048006", "false", "2"),
        ("422968005", "false", "3"),
        ("423121009", "true", "4"),
        ("67811000119102", "false", "1"),  # Primary small cell neoplasm of lung, stage 1
        ("67821000119109", "false", "2"),
        ("67831000119107", "false", "3"),
        ("67841000119103", "true", "4"),
    ],
)
def test_a_diagnosis_staged_in_its_code_implies_its_group_while_current(
    code: str, metastatic: str, group: str
) -> None:
    """Synthea's lung cancer module, like many problem lists, names the stage in the
    diagnosis itself."""
    assert _built_in(_fact(f"Condition/{code}", "active")) == {
        "Oncology.metastatic": metastatic,
        "Oncology.stageGroup": group,
    }
    assert _built_in(_fact(f"Condition/{code}", "resolved")) == {}


def test_stage_groups_that_differ_between_an_ehr_and_a_registry_conflict() -> None:
    _, event = _compared(
        "Oncology.stageGroup",
        _said("hospital-ehr", "Observation/21908-9", f"{SCT}|1222724007"),  # IA
        _said("tumor-registry", "Observation/21908-9", f"{SCT}|258224005"),  # 3
    )
    assert event is not None and event.kind == "OPENED"
