"""HL7 v2 messages → FactDrafts, pure, with the same attribute keys and values as the FHIR
module, so that a message and its FHIR twin normalize to the same facts.

PID gives the demographics (PID-7 as a FHIR date of the precision sent, PID-8 as a FHIR
administrative-gender code, PID-5 like a HumanName); AL1 allergies and DG1 diagnoses are
active while listed; OBX results carry OBX-11's status; RXE orders are active, RXA
administrations completed.
"""

from __future__ import annotations

from dataclasses import replace
from zoneinfo import ZoneInfo

from concord.events.models import AttributeClass, FactStatus
from concord.hl7v2 import er7
from concord.hl7v2.results import TEXT_TYPES, results
from concord.ingestion.codes import LOINC
from concord.normalization.facts.drafts import (
    DOSE_UNITS,
    FactDraft,
    code_flags,
    code_key,
    quantity_value,
)
from concord.normalization.facts.fhir import condition_class
from concord.normalization.identity.demographics import V2_SEX
from concord.normalization.patient import BIRTH_DATE, GENDER, NAME, normalized_name
from concord.normalization.terminology import MappedCode, Terminology, hl7_system
from concord.normalization.timing import Moment, from_hl7
from concord.normalization.units import normalize_quantity

# OBX-11 (HL7 table 0085) → FHIR Observation.status, and which results are retracted.
RESULT_STATUS = {
    "F": "final",
    "C": "corrected",
    "A": "amended",
    "P": "preliminary",
    "R": "registered",
    "I": "registered",
    "S": "preliminary",
    "W": "entered-in-error",
    "D": "entered-in-error",
}
_RESULT_FACT_STATUS: dict[str, FactStatus] = {"W": "ENTERED_IN_ERROR", "D": "DELETED"}
NUMERIC_TYPES = frozenset({"NM", "SN"})
CODED_TYPES = frozenset({"CE", "CWE", "CNE"})


def hl7_drafts(
    message: er7.Er7Message, terminology: Terminology, zone: ZoneInfo | None
) -> list[FactDraft]:
    drafts: list[FactDraft] = []
    for reader in (_demographics, _listed_items, _results, _medications):
        drafts += reader(message, terminology, zone)
    return drafts


def coded(
    segment: er7.Segment, field: int, terminology: Terminology, repetition: int = 0
) -> tuple[MappedCode, tuple[str, str]] | None:
    """A CE/CWE field's code, mapped: (mapped code, (system, code) as sent)."""
    code = segment.value(field, 1, repetition)
    if not code:
        return None
    system = hl7_system(segment.value(field, 3, repetition))
    return terminology.map(system, code), (system, code)


Timed = tuple[Moment | None, str | None]


def _time(segment: er7.Segment | None, field: int, zone: ZoneInfo | None) -> Timed:
    """(moment, text as sent) of a timestamp field; (None, None) when it is empty."""
    text = segment.value(field) if segment is not None else ""
    return (from_hl7(text, zone=zone), text) if text else (None, None)


def _demographics(
    message: er7.Er7Message, terminology: Terminology, zone: ZoneInfo | None
) -> list[FactDraft]:
    pid = message.first("PID")
    if pid is None:
        return []
    drafts = []
    birth = pid.value(7)[:8]
    if len(birth) in (4, 6, 8) and birth.isdigit():
        date = "-".join(part for part in (birth[:4], birth[4:6], birth[6:8]) if part)
        drafts.append(FactDraft(BIRTH_DATE, "DEMOGRAPHICS", date, date))
    gender = V2_SEX.get(pid.value(8).strip().upper())
    if gender is not None:
        drafts.append(FactDraft(GENDER, "DEMOGRAPHICS", gender, gender))
    name = normalized_name({"name": [_human_name(pid)]})
    if name is not None:
        drafts.append(FactDraft(NAME, "DEMOGRAPHICS", name[0], name[1]))
    return drafts


def _human_name(pid: er7.Segment) -> dict[str, object]:
    """PID-5's legal name (type L), else its first, as a FHIR HumanName."""
    repetitions = range(len(pid.repetitions(5)))  # 0-based, as the reader counts them
    chosen = next((r for r in repetitions if pid.value(5, 7, r) == "L"), 0)
    given = [part for part in (pid.value(5, 2, chosen), pid.value(5, 3, chosen)) if part]
    return {"family": pid.value(5, 1, chosen), "given": given}


def _listed_items(
    message: er7.Er7Message, terminology: Terminology, zone: ZoneInfo | None
) -> list[FactDraft]:
    """AL1 allergies (AL1-3, identified AL1-6) and DG1 diagnoses (DG1-3, at DG1-5)."""
    drafts = []
    for name, prefix, time_field in (("AL1", "AllergyIntolerance", 6), ("DG1", "Condition", 5)):
        for segment in message.all(name):
            chosen = coded(segment, 3, terminology)
            if chosen is None:
                continue
            attribute_class = "ALLERGY" if name == "AL1" else condition_class(chosen[0])
            drafts.append(
                _listed(prefix, attribute_class, chosen, _time(segment, time_field, zone))
            )
    return drafts


def _listed(
    prefix: str,
    attribute_class: AttributeClass,
    chosen: tuple[MappedCode, tuple[str, str]],
    time: Timed,
) -> FactDraft:
    code, original = chosen
    return FactDraft(
        f"{prefix}/{code_key(code)}",
        attribute_class,
        "active",
        code=code,
        original_code=original,
        clinical_status="active",
        effective=time[0],
        effective_text=time[1],
        flags=code_flags(code),
    )


def _results(
    message: er7.Er7Message, terminology: Terminology, zone: ZoneInfo | None
) -> list[FactDraft]:
    others, texts = results(message)
    drafts = [_result(obx, obr, terminology, zone) for obx, obr in others]
    for result in texts:
        draft = _result(result.lines[0], result.obr, terminology, zone, text=result.text)
        # Each sub-id is an observation of its own (a report's specimens): a fact id apiece.
        drafts.append(replace(draft, instance=result.sub_id or None) if draft else None)
    return [d for d in drafts if d is not None]


def _result(
    obx: er7.Segment,
    obr: er7.Segment | None,
    terminology: Terminology,
    zone: ZoneInfo | None,
    text: str | None = None,
) -> FactDraft | None:
    chosen = coded(obx, 3, terminology)
    result_status = obx.value(11).upper()
    if chosen is None or result_status == "X":  # X: the result cannot be obtained
        return None
    value: str | None
    unit = original_unit = None
    flags = code_flags(chosen[0])
    kind = obx.value(2).upper()
    if kind in NUMERIC_TYPES:
        number = _number(obx, kind)
        if number is None:
            return None
        loinc = chosen[0].code if chosen[0].system == LOINC else None
        normalized = normalize_quantity(number, obx.value(6) or None, loinc=loinc)
        value, unit, quantity_flags = quantity_value(normalized)
        original_unit, flags = normalized.original_unit, (*flags, *quantity_flags)
    elif kind in CODED_TYPES:
        result = coded(obx, 5, terminology)
        if result is None:
            return None
        value, flags = f"{result[0].system}|{result[0].code}", (*flags, *code_flags(result[0]))
    elif kind in TEXT_TYPES:  # pointers and encapsulated data (RP, ED) assert nothing
        value = " ".join((text or "").split()).casefold()
        if not value:
            return None
    else:
        return None
    # OBX-14 is when the observation was made; else OBR-7, when the specimen was collected.
    time = _time(obx, 14, zone)
    if time[1] is None:
        time = _time(obr, 7, zone)
    code, original = chosen
    return FactDraft(
        f"Observation/{code_key(code)}",
        "LABORATORY",
        value,
        unit=unit,
        original_unit=original_unit,
        code=code,
        original_code=original,
        status=_RESULT_FACT_STATUS.get(result_status, "ASSERTED"),
        clinical_status=RESULT_STATUS.get(result_status),
        effective=time[0],
        effective_text=time[1],
        flags=flags,
    )


def _number(obx: er7.Segment, kind: str) -> float | None:
    # SN is comparator^number: only a plain "=" or empty comparator is a value to compare.
    text = obx.value(5, 2) if kind == "SN" else obx.value(5)
    if kind == "SN" and obx.value(5, 1) not in ("", "="):
        return None
    try:
        return float(text)
    except ValueError:
        return None


def _medications(
    message: er7.Er7Message, terminology: Terminology, zone: ZoneInfo | None
) -> list[FactDraft]:
    drafts = []
    # RXE: give code, amount, units; ordered when the ORC transaction happened (ORC-9).
    # RXA: administered code, amount, units; given at RXA-3.
    orc_time = _time(message.first("ORC"), 9, zone)
    for name, fields, status in (("RXE", (2, 3, 5), "active"), ("RXA", (5, 6, 7), "completed")):
        for segment in message.all(name):
            chosen = coded(segment, fields[0], terminology)
            if chosen is None:
                continue
            time = orc_time if name == "RXE" else _time(segment, 3, zone)
            drafts += _medication(chosen, status, time, segment.value(fields[1]),
                                  segment.value(fields[2], 1))  # fmt: skip
    return drafts


def _medication(
    chosen: tuple[MappedCode, tuple[str, str]], status: str, time: Timed, amount: str, unit: str
) -> list[FactDraft]:
    code, original = chosen
    key = f"Medication/{code_key(code)}"
    drafts = [
        FactDraft(
            key,
            "MEDICATION",
            status,
            code=code,
            original_code=original,
            clinical_status=status,
            effective=time[0],
            effective_text=time[1],
            flags=code_flags(code),
        )
    ]
    dose = _float(amount)
    if dose is not None:
        normalized = normalize_quantity(dose, unit or None, prefer=DOSE_UNITS)
        value, canonical, flags = quantity_value(normalized)
        drafts.append(
            FactDraft(
                f"{key}/dose",
                "MEDICATION",
                value,
                unit=canonical,
                original_unit=normalized.original_unit,
                code=code,
                original_code=original,
                effective=time[0],
                effective_text=time[1],
                flags=(*code_flags(code), *flags),
            )
        )
    return drafts


def _float(text: str) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None
