"""Which patient a FHIR resource or an HL7 v2 message is about: shared by ingestion,
publishing and normalization, and light to import (no FHIR models)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from concord.hl7v2 import er7

# Where each ingested type names its patient, when a fact without one is useless: FHIR makes
# it optional for Observation and DiagnosticReport, but a result about nobody cannot be
# compared. An Encounter or DocumentReference may lack it, as FHIR allows.
PATIENT_REFERENCE: dict[str, str | None] = {
    "Patient": None,
    "Observation": "subject",
    "Condition": "subject",
    "AllergyIntolerance": "patient",
    "MedicationStatement": "subject",
    "MedicationRequest": "subject",
    "Encounter": None,
    "DiagnosticReport": "subject",
    "DocumentReference": None,
}
# Where each type names its patient when it does, required or not.
SUBJECT_ELEMENT = {
    **{t: e for t, e in PATIENT_REFERENCE.items() if e},
    "Encounter": "subject",
    "DocumentReference": "subject",
}
# Where the other FHIR types (kept for provenance: Immunization, Procedure, ...) usually do.
USUAL_SUBJECT_ELEMENTS = ("subject", "patient")


def patient_of(resource: Mapping[str, Any]) -> str | None:
    """`Patient/<id>` of the patient a resource is about (a Patient: itself), or None. An
    absolute or versioned reference names the same Patient/<id>; ingestion has already
    rewritten a Bundle's urn:uuid references to it."""
    if resource.get("resourceType") == "Patient":
        rid = resource.get("id")
        return f"Patient/{rid}" if isinstance(rid, str) and rid else None
    element = SUBJECT_ELEMENT.get(str(resource.get("resourceType")))
    if element is not None:
        return patient_in(resource.get(element))
    found = (patient_in(resource.get(usual)) for usual in USUAL_SUBJECT_ELEMENTS)
    return next((patient for patient in found if patient is not None), None)


def patient_in(reference: object) -> str | None:
    """`Patient/<id>` of a FHIR Reference to a Patient (absolute or versioned), or None."""
    target = reference.get("reference") if isinstance(reference, dict) else None
    if not isinstance(target, str) or "Patient/" not in target:
        return None
    return "Patient/" + target.rsplit("Patient/", 1)[1].split("/_history/")[0]


def hl7_patient(message: er7.Er7Message | None) -> str | None:
    """`PID/<PID-3.1>` of the patient an HL7 v2 message is about, or None."""
    pid = message.first("PID") if message is not None else None
    mrn = pid.value(3, 1) if pid is not None else ""
    return f"PID/{mrn}" if mrn else None
