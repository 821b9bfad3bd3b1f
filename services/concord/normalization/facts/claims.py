"""Claim lines → FactDrafts, pure (format: docs/claims.md).

A claim says what a payer was billed for: each ICD-10-CM diagnosis is a `Condition/<code>`
listed as active on the service date (as an HL7 v2 DG1 is), and a drug line's NDC, through the
NDC → RxNorm ingredient crosswalk, a `Medication/<RxNorm>` given (`completed`) on that date.
Procedure codes (CPT, HCPCS) are no attribute Concord compares, so they give no fact.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from concord.ingestion.codes import NDC
from concord.normalization.facts.drafts import FactDraft, code_flags, code_key
from concord.normalization.facts.fhir import condition_class
from concord.normalization.terminology import Terminology
from concord.normalization.timing import normalize_time


def claim_drafts(line: Mapping[str, Any], terminology: Terminology) -> list[FactDraft]:
    when = line.get("service_date_from")
    effective = normalize_time(when) if isinstance(when, str) else None
    effective_text = when if effective is not None else None
    drafts = []
    for diagnosis in line.get("diagnoses") or ():
        code = terminology.map(str(diagnosis["system"]), str(diagnosis["code"]))
        drafts.append(
            FactDraft(
                f"Condition/{code_key(code)}",
                condition_class(code),
                "active",
                code=code,
                original_code=(str(diagnosis["system"]), str(diagnosis["code"])),
                clinical_status="active",
                flags=code_flags(code),
                effective=effective,
                effective_text=effective_text,
            )
        )
    drug = line.get("drug")
    if isinstance(drug, dict) and isinstance(drug.get("ndc"), str):
        code = terminology.map(NDC, drug["ndc"])
        drafts.append(
            FactDraft(
                f"Medication/{code_key(code)}",
                "MEDICATION",
                "completed",
                code=code,
                original_code=(NDC, drug["ndc"]),
                clinical_status="completed",
                flags=code_flags(code),
                effective=effective,
                effective_text=effective_text,
            )
        )
    return drafts


def claim_patient(line: Mapping[str, Any]) -> dict[str, Any]:
    """The claim's patient as a FHIR Patient, so that one extraction serves both: the member id
    is an identifier of the payer's member system."""
    patient = line.get("patient") or {}
    identifiers = list(patient.get("identifiers") or ())
    payer = (line.get("payer") or {}).get("id")
    if patient.get("member_id") and payer:
        identifiers.append(
            {"system": f"urn:concord:payer:{payer}:member", "value": patient["member_id"]}
        )
    return {
        "resourceType": "Patient",
        "identifier": identifiers,
        "name": [{"family": patient.get("family"), "given": patient.get("given") or []}],
        "birthDate": patient.get("birth_date"),
        "gender": patient.get("sex"),
    }
