"""FHIR R4 resources → FactDrafts, pure.

Attribute keys: `Patient.birthDate`, `Patient.gender`, `Patient.name`;
`Observation/<LOINC>` (one per component too); `Condition/<code>` and its `/stage`;
`AllergyIntolerance/<substance code>`; `Medication/<RxNorm>` and its `/dose`. A code a
crosswalk could not map keeps its own system in the key (`system|code`) and is flagged
UNMAPPED_CODE: a fact is never dropped for want of a mapping.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from concord.events.models import AttributeClass, FactStatus
from concord.ingestion.codes import ICD10_CM, LOINC, RXNORM, SNOMED_CT
from concord.normalization.facts.drafts import (
    DOSE_UNITS,
    FactDraft,
    code_flags,
    code_key,
    quantity_value,
)
from concord.normalization.patient import BIRTH_DATE, GENDER, NAME, normalized_name
from concord.normalization.terminology import MappedCode, Terminology
from concord.normalization.timing import normalize_time
from concord.normalization.units import normalize_quantity

UCUM = "http://unitsofmeasure.org"
# Which standard system keys each attribute, best first.
LAB_SYSTEMS = (LOINC,)
CONDITION_SYSTEMS = (SNOMED_CT, ICD10_CM)
SUBSTANCE_SYSTEMS = (RXNORM, SNOMED_CT)
MEDICATION_SYSTEMS = (RXNORM,)  # NDC reaches it through the NDC → RxNorm ingredient crosswalk
# Verification statuses that turn an assertion into its negation.
_VERIFICATION_STATUS: dict[str, FactStatus] = {
    "refuted": "REFUTED",
    "entered-in-error": "ENTERED_IN_ERROR",
}

Extractor = Callable[[Mapping[str, Any], Terminology], list[FactDraft]]


def fhir_drafts(resource: Mapping[str, Any], terminology: Terminology) -> list[FactDraft]:
    """The facts a resource asserts; [] for types that assert none Concord compares."""
    extractor = _EXTRACTORS.get(str(resource.get("resourceType")))
    return extractor(resource, terminology) if extractor is not None else []


# --- shared readers -----------------------------------------------------------------------------


def _objects(value: object) -> list[Mapping[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _object(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


# FHIR allows a Coding without a system; its code is kept as an unmapped code of this system
# (flagged UNMAPPED_CODE), as HL7 v2 keeps a CWE without its coding system.
NO_SYSTEM = "urn:concord:code-without-system"


def _codings(concept: object) -> Iterator[tuple[str, str, str | None]]:
    for coding in _objects(_object(concept).get("coding")):
        system, code = coding.get("system"), coding.get("code")
        if not isinstance(code, str) or not code.strip():
            continue
        if not isinstance(system, str) or not system.strip():
            system = NO_SYSTEM
        display = coding.get("display")
        yield system, code.strip(), display if isinstance(display, str) else None


def best_code(
    concept: object, terminology: Terminology, preferred: Sequence[str]
) -> tuple[MappedCode, tuple[str, str]] | None:
    """The concept's coding that maps to the most preferred system (else the first coding),
    with the (system, code) the source sent."""
    mapped = [(terminology.map(s, c), (s, c)) for s, c, _ in _codings(concept)]
    if not mapped:
        return None
    for system in preferred:
        for candidate in mapped:
            if candidate[0].mapped and candidate[0].system == system:
                return candidate
    return next((m for m in mapped if m[0].mapped), mapped[0])


def _status_code(concept: object) -> str | None:
    return next((code for _, code, _ in _codings(concept)), None)


def _first_time(resource: Mapping[str, Any], *elements: str) -> str | None:
    for element in elements:
        value = resource.get(element)
        if isinstance(value, dict):  # a Period: when it began
            value = value.get("start")
        if isinstance(value, str) and value:
            return value
    return None


def _effective(resource: Mapping[str, Any], *elements: str) -> dict[str, Any]:
    text = _first_time(resource, *elements)
    if text is None:
        return {}
    return {"effective": normalize_time(text), "effective_text": text}


def _coded_draft(
    prefix: str,
    attribute_class: AttributeClass,
    chosen: tuple[MappedCode, tuple[str, str]],
    value: str | None,
    **fields: Any,
) -> FactDraft:
    code, original = chosen
    return FactDraft(
        attribute=f"{prefix}/{code_key(code)}",
        attribute_class=attribute_class,
        value=value,
        code=code,
        original_code=original,
        flags=(*code_flags(code), *fields.pop("flags", ())),
        **fields,
    )


def _verification(resource: Mapping[str, Any]) -> tuple[str | None, FactStatus]:
    verification = _status_code(resource.get("verificationStatus"))
    return verification, _VERIFICATION_STATUS.get(verification or "", "ASSERTED")


# --- per resource type --------------------------------------------------------------------------


def _patient(resource: Mapping[str, Any], terminology: Terminology) -> list[FactDraft]:
    drafts = []
    birth_date = resource.get("birthDate")
    if isinstance(birth_date, str):
        drafts.append(FactDraft(BIRTH_DATE, "DEMOGRAPHICS", birth_date, birth_date))
    gender = resource.get("gender")
    if isinstance(gender, str):
        drafts.append(FactDraft(GENDER, "DEMOGRAPHICS", gender, gender))
    name = normalized_name(resource)
    if name is not None:
        drafts.append(FactDraft(NAME, "DEMOGRAPHICS", name[0], name[1]))
    return drafts


def _observation(resource: Mapping[str, Any], terminology: Terminology) -> list[FactDraft]:
    status = resource.get("status")
    fact_status: FactStatus = "ENTERED_IN_ERROR" if status == "entered-in-error" else "ASSERTED"
    common = _effective(resource, "effectiveDateTime", "effectivePeriod", "effectiveInstant")
    common |= {"clinical_status": status if isinstance(status, str) else None}
    drafts = []
    for part in (resource, *_objects(resource.get("component"))):
        chosen = best_code(part.get("code"), terminology, LAB_SYSTEMS)
        if chosen is None:
            continue
        value = _observed_value(part, chosen[0], terminology)
        if value is None and fact_status == "ASSERTED":
            continue  # no result (dataAbsentReason, or a panel's header): nothing asserted
        text, unit, original_unit, flags = value or (None, None, None, ())
        drafts.append(
            _coded_draft(
                "Observation",
                "LABORATORY",
                chosen,
                text,
                unit=unit,
                original_unit=original_unit,
                status=fact_status,
                flags=flags,
                **common,
            )
        )
    return drafts


def _observed_value(
    part: Mapping[str, Any], code: MappedCode, terminology: Terminology
) -> tuple[str | None, str | None, str | None, tuple[str, ...]] | None:
    """(value, canonical unit, unit as sent, flags) of an Observation or component value."""
    quantity = part.get("valueQuantity")
    if isinstance(quantity, dict) and isinstance(quantity.get("value"), int | float):
        sent_unit = quantity.get("code") if quantity.get("system") == UCUM else None
        sent_unit = sent_unit or quantity.get("unit")
        loinc = code.code if code.system == LOINC else None
        normalized = normalize_quantity(
            float(quantity["value"]), sent_unit if isinstance(sent_unit, str) else None, loinc=loinc
        )
        value, unit, flags = quantity_value(normalized)
        return value, unit, normalized.original_unit, flags
    concept = part.get("valueCodeableConcept")
    if concept is not None:
        chosen = best_code(concept, terminology, (SNOMED_CT, LOINC))
        if chosen is not None:
            return f"{chosen[0].system}|{chosen[0].code}", None, None, code_flags(chosen[0])
    for element in ("valueString", "valueBoolean", "valueInteger"):
        value = part.get(element)
        if isinstance(value, str | bool | int):
            text = " ".join(str(value).split()).casefold()
            return text, None, None, ()
    return None


def _condition(resource: Mapping[str, Any], terminology: Terminology) -> list[FactDraft]:
    chosen = best_code(resource.get("code"), terminology, CONDITION_SYSTEMS)
    if chosen is None:
        return []
    verification, status = _verification(resource)
    clinical = _status_code(resource.get("clinicalStatus"))
    attribute_class = condition_class(chosen[0])
    common = _effective(resource, "onsetDateTime", "onsetPeriod", "recordedDate")
    drafts = [
        _coded_draft(
            "Condition",
            attribute_class,
            chosen,
            clinical,
            status=status,
            clinical_status=clinical,
            verification_status=verification,
            **common,
        )
    ]
    for stage in _objects(resource.get("stage")):
        summary = best_code(stage.get("summary"), terminology, (SNOMED_CT,))
        if summary is not None:
            key = f"Condition/{code_key(chosen[0])}/stage"
            value = f"{summary[0].system}|{summary[0].code}"
            drafts.append(
                FactDraft(
                    key,
                    "ONCOLOGY",
                    value,
                    code=summary[0],
                    original_code=summary[1],
                    status=status,
                    flags=code_flags(summary[0]),
                    **common,
                )
            )
    return drafts


def condition_class(code: MappedCode) -> AttributeClass:
    # ICD-10-CM C00-D49 are neoplasms; oncology policy (issue 5) refines SNOMED CT by hierarchy.
    if code.system == ICD10_CM and code.code[:1] == "C":
        return "ONCOLOGY"
    if code.system == ICD10_CM and code.code[:1] == "D" and code.code[1:3].isdigit():
        return "ONCOLOGY" if int(code.code[1:3]) <= 49 else "CONDITION"
    return "CONDITION"


def _allergy(resource: Mapping[str, Any], terminology: Terminology) -> list[FactDraft]:
    chosen = best_code(resource.get("code"), terminology, SUBSTANCE_SYSTEMS)
    if chosen is None:
        return []
    verification, status = _verification(resource)
    clinical = _status_code(resource.get("clinicalStatus"))
    return [
        _coded_draft(
            "AllergyIntolerance",
            "ALLERGY",
            chosen,
            clinical,
            status=status,
            clinical_status=clinical,
            verification_status=verification,
            **_effective(resource, "onsetDateTime", "onsetPeriod", "recordedDate"),
        )
    ]


def _medication(resource: Mapping[str, Any], terminology: Terminology) -> list[FactDraft]:
    concept = resource.get("medicationCodeableConcept") or _contained_medication(resource)
    chosen = best_code(concept, terminology, MEDICATION_SYSTEMS)
    if chosen is None:
        return []
    status = resource.get("status")
    clinical = status if isinstance(status, str) else None
    fact_status: FactStatus = "ENTERED_IN_ERROR" if status == "entered-in-error" else "ASSERTED"
    is_request = resource.get("resourceType") == "MedicationRequest"
    common = _effective(
        resource, *(("authoredOn",) if is_request else ("effectiveDateTime", "effectivePeriod"))
    )
    drafts = [
        _coded_draft(
            "Medication",
            "MEDICATION",
            chosen,
            clinical,
            status=fact_status,
            clinical_status=clinical,
            **common,
        )
    ]
    dosages = _objects(resource.get("dosageInstruction" if is_request else "dosage"))
    rates = _objects(dosages[0].get("doseAndRate")) if dosages else []
    dose = _object(rates[0].get("doseQuantity")) if rates else {}
    if isinstance(dose.get("value"), int | float):
        unit = dose.get("code") if dose.get("system") == UCUM else dose.get("unit")
        normalized = normalize_quantity(
            float(dose["value"]), unit if isinstance(unit, str) else None, prefer=DOSE_UNITS
        )
        value, canonical, flags = quantity_value(normalized)
        drafts.append(
            FactDraft(
                f"Medication/{code_key(chosen[0])}/dose",
                "MEDICATION",
                value,
                unit=canonical,
                original_unit=normalized.original_unit,
                code=chosen[0],
                original_code=chosen[1],
                status=fact_status,
                flags=(*code_flags(chosen[0]), *flags),
                **common,
            )
        )
    return drafts


def _contained_medication(resource: Mapping[str, Any]) -> object:
    reference = _object(resource.get("medicationReference")).get("reference")
    if not isinstance(reference, str) or not reference.startswith("#"):
        return None
    for contained in _objects(resource.get("contained")):
        if contained.get("id") == reference[1:] and contained.get("resourceType") == "Medication":
            return contained.get("code")
    return None


_EXTRACTORS: dict[str, Extractor] = {
    "Patient": _patient,
    "Observation": _observation,
    "Condition": _condition,
    "AllergyIntolerance": _allergy,
    "MedicationStatement": _medication,
    "MedicationRequest": _medication,
}
