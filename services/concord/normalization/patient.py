"""FHIR Patient → demographic facts, pure.

The enterprise patient id comes from a shared identifier whose system is configured (an
enterprise MPI). Values are normalized so that equal means equal: a name is compared on its
official (else first) HumanName as "family|given given", case-folded, whitespace collapsed,
Unicode NFC — accents are kept, because José and Jose may be different people.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from concord.deadletters import Rejection
from concord.events.models import ClinicalFact, IngestedRecord

BIRTH_DATE = "Patient.birthDate"
GENDER = "Patient.gender"
NAME = "Patient.name"


def enterprise_id(patient: Mapping[str, Any], systems: Sequence[str]) -> str | None:
    """The value of the first identifier of the first configured system that has one."""
    identifiers = [i for i in patient.get("identifier") or () if isinstance(i, dict)]
    for system in systems:
        for identifier in identifiers:
            value = identifier.get("value")
            if identifier.get("system") == system and isinstance(value, str) and value.strip():
                return value.strip()
    return None


def _collapse(text: str) -> str:
    return " ".join(unicodedata.normalize("NFC", text).split())


def _chosen_name(names: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    for name in names:
        if name.get("use") == "official":
            return name
    return names[0] if names else None


def normalized_name(patient: Mapping[str, Any]) -> tuple[str, str] | None:
    """(comparison value, display) of the patient's official name, or None without one."""
    name = _chosen_name([n for n in patient.get("name") or () if isinstance(n, dict)])
    if name is None:
        return None
    family = _collapse(str(name.get("family") or ""))
    given = _collapse(" ".join(str(g) for g in name.get("given") or ()))
    if not family and not given:
        return None
    return f"{family}|{given}".casefold(), f"{given} {family}".strip()


def normalizable(record: IngestedRecord) -> bool:
    """Whether this core turns the record into facts. Other resource types, HL7 v2, claims
    and deletes stay on concord.ingested until their normalization exists."""
    return (
        record.format == "FHIR_R4"
        and record.resource_type == "Patient"
        and record.operation == "UPSERT"
    )


def patient_facts(record: IngestedRecord, systems: Sequence[str]) -> list[ClinicalFact] | Rejection:
    patient = orjson.loads(record.payload)
    patient_id = enterprise_id(patient, systems)
    if patient_id is None:
        return Rejection(
            "MISSING_ENTERPRISE_ID",
            "the Patient has no identifier of the configured enterprise systems",
            location="Patient.identifier",
        )
    values: list[tuple[str, str, str]] = []
    if isinstance(patient.get("birthDate"), str):
        values.append((BIRTH_DATE, patient["birthDate"], patient["birthDate"]))
    if isinstance(patient.get("gender"), str):
        values.append((GENDER, patient["gender"], patient["gender"]))
    name = normalized_name(patient)
    if name is not None:
        values.append((NAME, *name))
    return [
        ClinicalFact(
            fact_id=hashlib.sha256(f"{record.record_id}\x1f{attribute}".encode()).hexdigest()[:32],
            patient_id=patient_id,
            attribute=attribute,
            attribute_class="DEMOGRAPHICS",
            value=value,
            display=display,
            status="ASSERTED",
            provenance=record.provenance,
        )
        for attribute, value, display in values
    ]
