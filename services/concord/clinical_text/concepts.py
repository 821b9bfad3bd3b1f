"""What text extraction asserts: attribute keys and their values.

These are the keys the conflicts stage compares oncology under (the policy's derived
attributes, `conflicts/default_policy.yaml`), so that a fact read from a note meets the same
attribute implied by a coded Condition, Observation or claim. The generator's answer key
uses the same names.
"""

from __future__ import annotations

from typing import Final, Literal

PRIMARY_SITE: Final = "Oncology.primarySite"  # ICD-10-CM category: "C50"
HISTOLOGY: Final = "Oncology.histology"  # ICD-O-3 morphology with behaviour: "8500/3"
STAGE_GROUP: Final = "Oncology.stageGroup"  # AJCC stage group, main number: "1".."4"
# TNM categories as AJCC writes them, without the c/p/yp prefix or the subcategory letter:
# "T0" "Tis" "T1".."T4", "N0".."N3", "M0" "M1" (TX, NX and MX assert nothing).
TNM_T: Final = "Oncology.tnm/T"
TNM_N: Final = "Oncology.tnm/N"
TNM_M: Final = "Oncology.tnm/M"
METASTATIC: Final = "Oncology.metastatic"  # "true" | "false"
# One key per distant site, named by its ICD-10-CM secondary-neoplasm code; "true" | "false".
METASTATIC_SITE_PREFIX: Final = "Oncology.metastaticSite/"
BIOMARKER_PREFIX: Final = "Oncology.biomarker/"  # + ER PR HER2 EGFR ALK PD-L1: positive|negative
DISEASE_STATUS: Final = "Oncology.diseaseStatus"  # one of DISEASE_STATUSES

BIOMARKERS: Final = ("ER", "PR", "HER2", "EGFR", "ALK", "PD-L1")
# Details a report gives beside the status, keyed under the marker's own key.
ER_PERCENT: Final = "Oncology.biomarker/ER/percent"  # nuclei staining, "0".."100"
PR_PERCENT: Final = "Oncology.biomarker/PR/percent"
HER2_IHC: Final = "Oncology.biomarker/HER2/IHC"  # "0" "1+" "2+" "3+"
HER2_FISH: Final = "Oncology.biomarker/HER2/FISH"  # "amplified" | "not-amplified"
PDL1_TPS: Final = "Oncology.biomarker/PD-L1/TPS"  # tumour proportion score, percent
PDL1_CPS: Final = "Oncology.biomarker/PD-L1/CPS"  # combined positive score

METASTATIC_SITES: Final = {
    "C78.0": "lung",
    "C78.6": "peritoneum",
    "C78.7": "liver",
    "C79.3": "brain",
    "C79.5": "bone",
    "C79.7": "adrenal gland",
}

DISEASE_STATUSES: Final = ("progression", "stable", "partial-response", "complete-response")

# Assertion status of a mention (ConText). Only an affirmed, current mention about the
# patient becomes a fact: a negated one asserts the opposite where the attribute has one
# (no metastases: metastatic "false"), and nothing elsewhere.
Assertion = Literal["affirmed", "negated", "possible", "hypothetical", "historical", "family"]

# The kinds of document text comes from, which are the policy's evidence classes for it.
DocumentKind = Literal["pathology-text", "note-text"]
