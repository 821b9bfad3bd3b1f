"""Oncology facts read from text (issue 18): the assertion cases the issue names, the
receptor and HER2 rules, and notes with no oncology content."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from concord.clinical_text import concepts as c
from concord.clinical_text.documents import fhir_documents
from concord.clinical_text.extract import CHUNK_CHARS, TextFinding, chunks, extract, method
from concord.clinical_text.rules import default_rules

REVIEW_BELOW = 0.7  # the built-in policy's threshold for a text fact


def facts(text: str) -> dict[str, str]:
    """What the text asserts as facts: its sure findings, attribute → value."""
    return {f.attribute: f.value for f in extract(text) if f.confidence >= REVIEW_BELOW}


def test_no_evidence_of_metastatic_disease_is_not_metastatic() -> None:
    assert (
        facts("Invasive ductal carcinoma, left breast.\nNo evidence of metastatic disease.")[
            c.METASTATIC
        ]
        == "false"
    )


def test_cannot_rule_out_is_a_candidate_for_review_not_a_fact() -> None:
    text = "Adenocarcinoma of the colon.\nCannot rule out metastatic disease in the liver."
    findings = {f.attribute: f for f in extract(text)}
    assert c.METASTATIC not in facts(text)
    assert findings[c.METASTATIC].assertion == "possible"
    assert findings[c.METASTATIC].confidence < REVIEW_BELOW
    assert facts(text)[c.PRIMARY_SITE] == "C18"


def test_history_of_and_status_post_assert_no_current_cancer() -> None:
    text = "History of breast cancer, status post mastectomy.\nPresents for knee pain."
    assert facts(text) == {}


def test_a_relatives_cancer_is_not_the_patients() -> None:
    assert facts("Mother had breast cancer. Father with colon cancer at 60.") == {}
    note = "Family History:\nSister - ovarian cancer.\nAssessment:\nStage IIIA lung adenocarcinoma."
    found = facts(note)
    assert found[c.PRIMARY_SITE] == "C34" and found[c.STAGE_GROUP] == "3"


def test_er_negative_pr_positive_with_its_percent() -> None:
    found = facts("Invasive ductal carcinoma of the breast. ER negative; PR positive (5%).")
    assert found[c.BIOMARKER_PREFIX + "ER"] == "negative"
    assert found[c.BIOMARKER_PREFIX + "PR"] == "positive"
    assert found[c.PR_PERCENT] == "5"
    assert c.ER_PERCENT not in found


def test_her2_equivocal_by_ihc_and_not_amplified_by_fish_is_negative() -> None:
    found = facts("Breast carcinoma. HER2 2+ by IHC, FISH not amplified.")
    assert found[c.HER2_IHC] == "2+"
    assert found[c.HER2_FISH] == "not-amplified"
    assert found[c.BIOMARKER_PREFIX + "HER2"] == "negative"


def test_her2_equivocal_without_fish_has_no_status() -> None:
    found = facts("Invasive ductal carcinoma, breast.\nHER2 (IHC): Equivocal (2+)")
    assert found[c.HER2_IHC] == "2+"
    assert c.BIOMARKER_PREFIX + "HER2" not in found


@pytest.mark.parametrize(("line", "status"), [("HER2: 3+", "positive"), ("HER2 IHC 1+", "negative"),
                                              ("HER2 (IHC): 0", "negative")])  # fmt: skip
def test_her2_by_its_ihc_score(line: str, status: str) -> None:
    assert facts(f"Invasive breast carcinoma.\n{line}")[c.BIOMARKER_PREFIX + "HER2"] == status


def test_a_synoptic_breast_report() -> None:
    report = (
        "FINAL DIAGNOSIS:\nLEFT BREAST, CORE BIOPSY:\n- Invasive lobular carcinoma, grade 2.\n"
        "- Metastatic carcinoma in 2 of 14 lymph nodes.\n"
        "Estrogen receptor (ER): Positive (95%, strong)\nPathologic stage: pT2 pN1a\n"
    )
    found = facts(report)
    assert found[c.PRIMARY_SITE] == "C50" and found[c.HISTOLOGY] == "8520/3"
    assert (found[c.TNM_T], found[c.TNM_N]) == ("T2", "N1")
    assert found[c.BIOMARKER_PREFIX + "ER"] == "positive" and found[c.ER_PERCENT] == "95"
    # Nodal spread is the N category: it says nothing of distant metastasis.
    assert c.METASTATIC not in found


def test_lung_biomarkers_and_metastatic_sites() -> None:
    found = facts(
        "Lung adenocarcinoma. PD-L1 (22C3) TPS: 60%. EGFR: exon 19 deletion detected. "
        "ALK rearrangement not detected. Metastatic to bone and liver."
    )
    assert (found[c.PRIMARY_SITE], found[c.HISTOLOGY]) == ("C34", "8140/3")
    assert found[c.BIOMARKER_PREFIX + "PD-L1"] == "positive" and found[c.PDL1_TPS] == "60"
    assert found[c.BIOMARKER_PREFIX + "EGFR"] == "positive"
    assert found[c.BIOMARKER_PREFIX + "ALK"] == "negative"
    assert found[c.METASTATIC] == "true"
    assert found[c.METASTATIC_SITE_PREFIX + "C79.5"] == "true"
    assert found[c.METASTATIC_SITE_PREFIX + "C78.7"] == "true"


def test_a_metastasis_site_is_not_the_primary() -> None:
    found = facts("Metastatic adenocarcinoma in the liver, consistent with colonic primary.")
    assert found[c.PRIMARY_SITE] == "C18"
    assert found[c.METASTATIC_SITE_PREFIX + "C78.7"] == "true"


def test_no_liver_metastases_says_nothing_of_other_organs() -> None:
    found = facts("Rectal adenocarcinoma. MRI: no liver metastases.")
    assert found[c.METASTATIC_SITE_PREFIX + "C78.7"] == "false"
    assert c.METASTATIC not in found


def test_a_hypothetical_progression_is_not_a_status() -> None:
    note = "Stage IV NSCLC.\nIf there is progression, will consider docetaxel.\n"
    assert c.DISEASE_STATUS not in facts(note)
    assert facts(note + "CT today shows interval progression.")[c.DISEASE_STATUS] == "progression"


@pytest.mark.parametrize(
    "note",
    [
        "Seen in the ER for chest pain. Troponin negative. Stage 3 CKD. PR interval 160 ms.",
        "Annual physical. BP 128/82. Lungs clear. Breast exam normal. Stage 2 hypertension.",
        "Diabetes follow-up: A1c 7.2%. Alk phos 88. Knee pain improving; no progression.",
        "URI symptoms x3 days. Rapid strep negative. Supportive care.",
    ],
)
def test_an_ordinary_note_yields_no_oncology_fact(note: str) -> None:
    assert extract(note) == []


def test_a_finding_points_at_its_words_and_names_its_method() -> None:
    text = "Assessment and Plan:\nStage IIB breast cancer."
    [stage] = [f for f in extract(text) if f.attribute == c.STAGE_GROUP]
    assert isinstance(stage, TextFinding)
    assert text[stage.start : stage.end] == "Stage IIB"
    assert stage.section == "observation_and_plan"
    assert method(default_rules()).endswith(default_rules().version)


# Phrasings the generator does not write, as reports and notes elsewhere do.
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("HER2/neu (4B5): Negative (score 1+)", {c.BIOMARKER_PREFIX + "HER2": "negative"}),
        ("ER 95%, PR 0%, HER2 FISH ratio 2.4 (amplified).",
         {c.BIOMARKER_PREFIX + "ER": "positive", c.BIOMARKER_PREFIX + "PR": "negative",
          c.HER2_FISH: "amplified", c.BIOMARKER_PREFIX + "HER2": "positive"}),
        ("Pathology notable for ER+/PR+/HER2-.",
         {c.BIOMARKER_PREFIX + "ER": "positive", c.BIOMARKER_PREFIX + "HER2": "negative"}),
        ("Tumor profile: EGFR negative, ALK rearrangement not detected, PD-L1 TPS 80%.",
         {c.BIOMARKER_PREFIX + "ALK": "negative", c.BIOMARKER_PREFIX + "PD-L1": "positive",
          c.PDL1_TPS: "80"}),
        ("Dx: colon ca s/p hemicolectomy 2019, now with new hepatic mets.",
         {c.PRIMARY_SITE: "C18", c.METASTATIC_SITE_PREFIX + "C78.7": "true"}),
        ("Impression: Stage IV NSCLC with bilateral adrenal metastases.",
         {c.STAGE_GROUP: "4", c.PRIMARY_SITE: "C34", c.METASTATIC_SITE_PREFIX + "C79.7": "true"}),
        ("Right breast, core biopsy: invasive mammary carcinoma, no special type, grade 2.",
         {c.PRIMARY_SITE: "C50", c.HISTOLOGY: "8500/3"}),
        ("Lymph node, level 7, EBUS-FNA: positive for metastatic carcinoma, consistent with "
         "lung primary.", {c.PRIMARY_SITE: "C34"}),
        ("Staging: pathologic stage IIIA (T3 N1a M0).", {c.TNM_M: "M0", c.METASTATIC: "false"}),
        ("Pathology notable for ER negative (0%), PR-positive (60%), HER2 2+ (equivocal), FISH "
         "pending.", {c.BIOMARKER_PREFIX + "ER": "negative", c.HER2_IHC: "2+"}),
    ],
)  # fmt: skip
def test_phrasings_from_elsewhere(text: str, expected: dict[str, str]) -> None:
    found = facts(text)
    assert {k: found.get(k) for k in expected} == expected


def test_a_lymph_node_metastasis_and_a_heading_of_several_organs_assert_no_distant_spread() -> None:
    report = (
        "A. UTERUS, CERVIX, BILATERAL OVARIES AND FALLOPIAN TUBES, HYSTERECTOMY:\n"
        "- Serous carcinoma, high grade.\nB. REGIONAL LYMPH NODES:\n"
        "- Metastatic carcinoma in 2 of 9 lymph nodes.\nTumor site: Left ovary\n"
    )
    found = facts(report)
    assert found[c.PRIMARY_SITE] == "C56" and c.METASTATIC not in found


def test_why_a_test_was_ordered_is_not_what_it_found() -> None:
    """From a real C-CDA imaging report: the indication is a suspicion, not a finding."""
    report = "Indications for Procedure:\nSuspected lung tumor.\n\nFindings:\nNo mass."
    assert facts(report) == {}
    assert facts("Suspected lung tumor.") == {}


SAMPLES = Path(__file__).resolve().parents[3] / "shared" / "data" / "fhir-converter-samples"


@pytest.mark.shared_data
def test_the_public_c_cda_documents_say_only_what_they_say_about_cancer() -> None:
    """22 real-shaped C-CDA documents (notes, summaries, an imaging report): their only
    oncology statement is the Transfer Summary's active problem "malignant neoplasm of
    liver"; the imaging report's "Suspected lung tumor" indication is none."""
    paths = sorted((SAMPLES / "ccda").glob("*.ccda"))
    if not paths:
        pytest.skip(f"NOT RUN: the public C-CDA samples are absent ({SAMPLES} not found)")
    found: dict[str, dict[str, str]] = {}
    for path in paths:
        attachment = {"contentType": "application/xml",
                      "data": base64.b64encode(path.read_bytes()).decode()}  # fmt: skip
        resource = {"resourceType": "DocumentReference", "content": [{"attachment": attachment}]}
        for document in fhir_documents(resource):
            said = facts(document.text)
            if said:
                found[path.name] = said
    assert len(paths) == 22
    assert found == {"Transfer_Summary.ccda": {c.PRIMARY_SITE: "C22"}}


def test_a_long_text_is_read_in_pieces_that_keep_offsets_and_sections() -> None:
    """A text longer than a piece: each finding's offsets still point at its words in the
    whole text, and a family history whose heading is in an earlier piece stays the
    family's."""
    filler = "".join(f"Visit {n}: blood pressure stable, no new complaints.\n" for n in range(400))
    text = (
        "Assessment:\nStage IIB invasive ductal carcinoma of the left breast.\n\n"
        + filler
        + "\nFamily history:\n"
        + filler
        + "Ovarian cancer at 50, stage 3.\n\nImaging:\nNew hepatic metastases.\n"
    )
    assert len(text) > 3 * CHUNK_CHARS and len(list(chunks(text))) >= 4
    found = {f.attribute: f for f in extract(text)}
    assert found[c.PRIMARY_SITE].value == "C50" and found[c.STAGE_GROUP].value == "2"
    site = found[c.METASTATIC_SITE_PREFIX + "C78.7"]
    assert site.value == "true" and text[site.start : site.end] == "hepatic metastases"
    # The stage 3 ovarian cancer, in a piece of its own under the carried family heading,
    # is the family's: it contradicts neither the stage nor the site (which would lower them).
    assert found[c.STAGE_GROUP].confidence > 0.7 and found[c.PRIMARY_SITE].confidence > 0.7
