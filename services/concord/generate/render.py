"""Registrations into records: FHIR R4 resources (one NDJSON line each), HL7 v2.5.1 messages
and claim lines (one NDJSON line each, docs/claims.md), every one valid for Concord's
ingestion, with what the answer key says about it."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import orjson

from concord.generate import narratives
from concord.generate.catalogue import UCUM, LabTest, LabUnit
from concord.generate.config import CLAIMS, SourceSpec
from concord.generate.model import (
    AllergyFact,
    ConditionFact,
    Demographics,
    LabDraw,
    LabResult,
    MarkerResult,
    MedicationFact,
    NoteFact,
    Registration,
    TumorFact,
    uuid_from,
)
from concord.ingestion.codes import ICD10_CM, LOINC, RXNORM, SNOMED_CT

MR_TYPE = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]}
_REPORTED_AFTER = timedelta(hours=2)  # a result is filed this long after the draw


@dataclass(frozen=True, slots=True)
class RecordInfo:
    """What the answer key needs about one record."""

    resource_type: str  # FHIR type, or HL7 type^trigger
    record_ref: str  # as ingestion names it: Patient/<id>, ADT^A04/<MSH-10>, ClaimLine/<id>/<n>
    registration: Registration


@dataclass(frozen=True, slots=True)
class Rendered:
    """One record as its source sends it."""

    resource_type: str
    record_ref: str
    time: datetime  # when the source sent it; files are in this order
    text: str  # a line of NDJSON, or a message whose segments end with CR
    registration: Registration

    @property
    def info(self) -> RecordInfo:
        return RecordInfo(self.resource_type, self.record_ref, self.registration)


class SourceWriter:
    """Ids for one source's records: counters and a random stream of the source's own."""

    def __init__(self, source: SourceSpec, seed: int) -> None:
        self.source = source
        self.rng = random.Random(f"{seed}:render:{source.name}")  # noqa: S311 - synthetic
        self.counter = 0

    def next_id(self, kind: str) -> str:
        self.counter += 1
        if self.source.style.ids == "uuid":
            return uuid_from(self.rng)
        return f"{self.source.mrn_prefix.lower()}-{kind}-{self.counter:08d}"

    def control_id(self) -> str:
        self.counter += 1
        return f"{self.source.mrn_prefix}{self.counter:09d}"

    def render(self, registration: Registration, shared_id_system: str) -> list[Rendered]:
        if self.source.format == "fhir":
            return _fhir_records(self, registration, shared_id_system)
        if self.source.format == CLAIMS:
            return _claim_lines(self, registration, shared_id_system)
        return _hl7_messages(self, registration, shared_id_system)


# --- shared formatting ---------------------------------------------------------------------


def phone_text(digits: str, style: str) -> str:
    if style == "digits":
        return digits
    if style == "parentheses":
        return f"({digits[:3]}) {digits[3:6]}-{digits[6:]}"
    return f"{digits[:3]}-{digits[3:6]}-{digits[6:]}"


def reported_unit(test: LabTest, source: SourceSpec) -> LabUnit:
    return test.si if source.style.units == "si" else test.conventional


def value_in(result: LabResult, unit: LabUnit) -> float:
    return round(result.value * unit.factor, unit.decimals)


def _number(value: float, decimals: int) -> int | float:
    return int(value) if decimals == 0 else value


def _flag(result: LabResult) -> str:
    if result.value > result.test.high:
        return "H"
    if result.value < result.test.low:
        return "L"
    return "N"


def _fhir_time(moment: datetime, source: SourceSpec) -> str:
    return moment.astimezone(source.zone).isoformat(timespec="seconds")


def _dumps(resource: dict[str, Any]) -> str:
    # As text: orjson's bytes keep their spare capacity (about 4 KB each), which at 10k
    # persons held a third of a gigabyte until the files were joined.
    return orjson.dumps(resource).decode("utf-8")


# --- FHIR R4 ---------------------------------------------------------------------------------


def _fhir_records(
    writer: SourceWriter, registration: Registration, shared_id_system: str
) -> list[Rendered]:
    source = writer.source
    patient = _patient(registration, shared_id_system)
    patient_ref = f"Patient/{registration.patient_id}"
    out = [Rendered("Patient", patient_ref, registration.registered, _dumps(patient), registration)]
    for draw in registration.draws:
        for result in draw.results:
            resource_id = writer.next_id("obs")
            observation = _observation(resource_id, patient_ref, draw, result, source)
            sent = draw.taken + _REPORTED_AFTER
            out.append(_rendered(observation, sent, registration))
    for condition in registration.conditions:
        resource = _condition(writer.next_id("cond"), patient_ref, condition, registration)
        out.append(_rendered(resource, registration.registered, registration))
    for allergy in registration.allergies:
        resource = _allergy(writer.next_id("alg"), patient_ref, allergy, registration)
        out.append(_rendered(resource, registration.registered, registration))
    for medication in registration.medications:
        resource = _medication(writer.next_id("med"), patient_ref, medication, source)
        out.append(_rendered(resource, medication.asserted, registration))
    for tumor in registration.tumors:
        resource = _tumor(writer.next_id("cond"), patient_ref, tumor, source)
        out.append(_rendered(resource, tumor.asserted, registration))
    for marker in registration.markers:
        resource = _marker(writer.next_id("obs"), patient_ref, marker, source)
        out.append(_rendered(resource, marker.taken + _REPORTED_AFTER, registration))
    for note in registration.documents:
        resource = _document(note.document_id or writer.next_id("doc"), patient_ref, note, source)
        out.append(_rendered(resource, note.written, registration))
    return out


def _rendered(resource: dict[str, Any], sent: datetime, registration: Registration) -> Rendered:
    ref = f"{resource['resourceType']}/{resource['id']}"
    return Rendered(resource["resourceType"], ref, sent, _dumps(resource), registration)


def _meta(moment: datetime, source: SourceSpec) -> dict[str, str]:
    return {"versionId": "1", "lastUpdated": _fhir_time(moment, source)}


def _patient(registration: Registration, shared_id_system: str) -> dict[str, Any]:
    source = registration.source
    demographics = registration.demographics
    identifiers: list[dict[str, Any]] = [
        {"use": "usual", "type": MR_TYPE, "system": source.mrn_system, "value": registration.mrn}
    ]
    if registration.shared_id:
        identifiers.append({"system": shared_id_system, "value": registration.person_id})
    name: dict[str, Any] = {
        "use": "official",
        "family": demographics.family,
        "given": list(demographics.given),
    }
    if demographics.suffix:
        name["suffix"] = [demographics.suffix]
    patient: dict[str, Any] = {
        "resourceType": "Patient",
        "id": registration.patient_id,
        "meta": _meta(registration.registered, source),
        "identifier": identifiers,
        "active": True,
        "name": [name],
    }
    if demographics.phone:
        patient["telecom"] = [
            {
                "system": "phone",
                "value": phone_text(demographics.phone, source.style.phone),
                "use": "home",
            }
        ]
    if demographics.sex:
        patient["gender"] = demographics.sex
    patient["birthDate"] = demographics.birth_date.isoformat()
    if demographics.address:
        address = demographics.address
        patient["address"] = [
            {
                "use": "home",
                "line": [address.line],
                "city": address.city,
                "state": address.state,
                "postalCode": address.postal_code,
                "country": "US",
            }
        ]
    return patient


def _quantity(value: float, unit: LabUnit) -> dict[str, Any]:
    return {
        "value": _number(value, unit.decimals),
        "unit": unit.unit,
        "system": UCUM,
        "code": unit.unit,
    }


def _observation(
    resource_id: str, patient_ref: str, draw: LabDraw, result: LabResult, source: SourceSpec
) -> dict[str, Any]:
    unit = reported_unit(result.test, source)
    reference_range: dict[str, Any] = {}
    if result.test.low > 0:
        reference_range["low"] = _quantity(round(result.test.low * unit.factor, 2), unit)
    reference_range["high"] = _quantity(round(result.test.high * unit.factor, 2), unit)
    return {
        "resourceType": "Observation",
        "id": resource_id,
        "meta": _meta(draw.taken + _REPORTED_AFTER, source),
        "identifier": [{"system": f"urn:concord:accession:{source.name}", "value": draw.draw_id}],
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "laboratory",
                    }
                ]
            }
        ],
        "code": {
            "coding": [{"system": "http://loinc.org", "code": unit.loinc, "display": unit.display}]
        },
        "subject": {"reference": patient_ref},
        "effectiveDateTime": _fhir_time(draw.taken, source),
        "issued": _fhir_time(draw.taken + _REPORTED_AFTER, source),
        "valueQuantity": _quantity(value_in(result, unit), unit),
        "interpretation": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                        "code": _flag(result),
                    }
                ]
            }
        ],
        "referenceRange": [reference_range],
    }


def _condition(
    resource_id: str, patient_ref: str, condition: ConditionFact, registration: Registration
) -> dict[str, Any]:
    source = registration.source
    concept = condition.concept
    if source.style.condition_system == "snomed":
        coding = {"system": SNOMED_CT, "code": concept.snomed, "display": concept.display}
    else:
        coding = {"system": ICD10_CM, "code": concept.icd10, "display": concept.display}
    resource: dict[str, Any] = {
        "resourceType": "Condition",
        "id": resource_id,
        "meta": _meta(registration.registered, source),
        "clinicalStatus": _coded(
            "http://terminology.hl7.org/CodeSystem/condition-clinical", condition.status
        ),
        "verificationStatus": _coded(
            "http://terminology.hl7.org/CodeSystem/condition-ver-status", "confirmed"
        ),
        "category": [
            _coded("http://terminology.hl7.org/CodeSystem/condition-category", "problem-list-item")
        ],
        "code": {"coding": [coding], "text": concept.display},
        "subject": {"reference": patient_ref},
        "onsetDateTime": condition.onset.isoformat(),
        "recordedDate": _recorded(condition.onset, registration),
    }
    if condition.abated is not None:
        resource["abatementDateTime"] = condition.abated.isoformat()
    return resource


def _recorded(onset: date, registration: Registration) -> str:
    # A condition known before the source registered the patient is recorded at registration.
    registered = registration.registered.astimezone(registration.source.zone).date()
    return max(onset, registered).isoformat()


def _allergy(
    resource_id: str, patient_ref: str, allergy: AllergyFact, registration: Registration
) -> dict[str, Any]:
    source = registration.source
    substance = allergy.substance
    reaction = allergy.reaction
    return {
        "resourceType": "AllergyIntolerance",
        "id": resource_id,
        "meta": _meta(registration.registered, source),
        "clinicalStatus": _coded(
            "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical",
            "inactive" if allergy.status == "inactive" else "active",
        ),
        "verificationStatus": _coded(
            "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification",
            allergy.status if allergy.status in ("refuted", "entered-in-error") else "confirmed",
        ),
        "type": "allergy",
        "category": [substance.category],
        "criticality": allergy.criticality,
        "code": {
            "coding": [
                {"system": substance.system, "code": substance.code, "display": substance.display}
            ]
        },
        "patient": {"reference": patient_ref},
        "recordedDate": allergy.recorded.isoformat(),
        "reaction": [
            {
                "manifestation": [
                    {
                        "coding": [
                            {
                                "system": SNOMED_CT,
                                "code": reaction.snomed,
                                "display": reaction.display,
                            }
                        ]
                    }
                ],
                "severity": "severe" if allergy.criticality == "high" else "mild",
            }
        ],
    }


def _medication(
    resource_id: str, patient_ref: str, medication: MedicationFact, source: SourceSpec
) -> dict[str, Any]:
    drug = medication.drug
    return {
        "resourceType": "MedicationStatement",
        "id": resource_id,
        "meta": _meta(medication.asserted, source),
        "status": medication.status,
        "medicationCodeableConcept": {
            "coding": [{"system": RXNORM, "code": drug.rxnorm, "display": drug.display}]
        },
        "subject": {"reference": patient_ref},
        "effectiveDateTime": _fhir_time(medication.asserted, source),
        "dateAsserted": _fhir_time(medication.asserted, source),
        "dosage": [
            {
                "text": f"{medication.dose_mg:g} mg daily",
                "doseAndRate": [
                    {
                        "doseQuantity": {
                            "value": medication.dose_mg,
                            "unit": "mg",
                            "system": UCUM,
                            "code": "mg",
                        }
                    }
                ],
            }
        ],
    }


def _tumor(
    resource_id: str, patient_ref: str, tumor: TumorFact, source: SourceSpec
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Condition",
        "id": resource_id,
        "meta": _meta(tumor.asserted, source),
        "clinicalStatus": _coded(
            "http://terminology.hl7.org/CodeSystem/condition-clinical", "active"
        ),
        "verificationStatus": _coded(
            "http://terminology.hl7.org/CodeSystem/condition-ver-status", "confirmed"
        ),
        "code": {
            "coding": [{"system": ICD10_CM, "code": tumor.icd10, "display": tumor.display}],
            "text": tumor.display,
        },
        "subject": {"reference": patient_ref},
        "recordedDate": _fhir_time(tumor.asserted, source),
    }
    if tumor.stage is not None:
        resource["stage"] = [{"summary": _coded(SNOMED_CT, tumor.stage)}]
    return resource


def _marker(
    resource_id: str, patient_ref: str, marker: MarkerResult, source: SourceSpec
) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": resource_id,
        "meta": _meta(marker.taken + _REPORTED_AFTER, source),
        "status": "final",
        "category": [
            _coded("http://terminology.hl7.org/CodeSystem/observation-category", "laboratory")
        ],
        "code": {"coding": [{"system": LOINC, "code": marker.loinc, "display": marker.display}]},
        "subject": {"reference": patient_ref},
        "effectiveDateTime": _fhir_time(marker.taken, source),
        "valueCodeableConcept": _coded(SNOMED_CT, marker.result),
    }


def _narrative(document_id: str, note: NoteFact) -> narratives.NarrativeDocument:
    return narratives.NarrativeDocument(
        document_id, note.kind, note.title, note.text, note.written, (), ()
    )


def _document(
    resource_id: str, patient_ref: str, note: NoteFact, source: SourceSpec
) -> dict[str, Any]:
    """A note as a DocumentReference, a pathology report as a DiagnosticReport with its text
    in presentedForm (narratives.py's renderers), with meta as the source's other records."""
    document = _narrative(resource_id, note)
    if note.kind == narratives.PATHOLOGY:
        rendered = narratives.to_fhir_diagnostic_report(document, patient_ref)
    else:
        rendered = narratives.to_fhir_document_reference(document, patient_ref)
    resource_type = rendered.pop("resourceType")
    rendered.pop("id")
    return {
        "resourceType": resource_type,
        "id": resource_id,
        "meta": _meta(note.written, source),
        **rendered,
    }


def _coded(system: str, code: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code}]}


# --- HL7 v2.5.1 ------------------------------------------------------------------------------

_HL7_ESCAPES = (("\\", "\\E\\"), ("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"), ("~", "\\R\\"))


def hl7_escape(text: str) -> str:
    for plain, escaped in _HL7_ESCAPES:
        text = text.replace(plain, escaped)
    return text


def _hl7_time(moment: datetime, source: SourceSpec) -> str:
    return moment.astimezone(source.zone).strftime("%Y%m%d%H%M%S%z")


def _hl7_messages(
    writer: SourceWriter, registration: Registration, shared_id_system: str
) -> list[Rendered]:
    out = [_adt(writer, registration, "A04", registration.registered, shared_id_system)]
    if registration.updated is not None:
        out.append(_adt(writer, registration, "A08", registration.updated, shared_id_system))
    for draw in registration.draws:
        out.append(_oru(writer, registration, draw, shared_id_system))
    for note in registration.documents:
        out.append(_text_message(writer, registration, note, shared_id_system))
    return out


def _msh(writer: SourceWriter, sent: datetime, message_type: str, control_id: str) -> str:
    source = writer.source
    # MSH-18 names UTF-8: names such as Nguyễn or Müller are sent as they are.
    return (
        f"MSH|^~\\&|{source.assigning_authority}|SYNTH|CONCORD|CONCORD|"
        f"{_hl7_time(sent, source)}||{message_type}|{control_id}|P|2.5.1||||||UNICODE UTF-8"
    )


def _pid(registration: Registration, shared_id_system: str) -> str:
    source = registration.source
    demographics: Demographics = registration.demographics
    identifiers = [
        f"{hl7_escape(registration.mrn)}^^^{source.assigning_authority}&{source.mrn_system}&URI^MR"
    ]
    if registration.shared_id:
        # No namespace id: a reader takes CX.4's namespace before its universal id, and the
        # universal id is what names the same system as FHIR's identifier.system.
        identifiers.append(f"{registration.person_id}^^^&{shared_id_system}&URI^PI")
    given, *middle = demographics.given or ("",)
    name = "^".join(
        hl7_escape(part)
        for part in (
            demographics.family,
            given,
            " ".join(middle),
            (demographics.suffix or "").rstrip(".").upper(),
        )
    ).rstrip("^")
    sex = {"male": "M", "female": "F"}.get(demographics.sex or "", "")
    address = ""
    if demographics.address is not None:
        a = demographics.address
        address = "^".join(
            hl7_escape(part) for part in (a.line, "", a.city, a.state, a.postal_code, "USA", "H")
        )
    phone = phone_text(demographics.phone, source.style.phone) if demographics.phone else ""
    return (
        f"PID|1||{'~'.join(identifiers)}||{name}||{demographics.birth_date:%Y%m%d}|{sex}|||"
        f"{address}||{hl7_escape(phone)}"
    )


def _adt(
    writer: SourceWriter,
    registration: Registration,
    trigger: str,
    sent: datetime,
    shared_id_system: str,
) -> Rendered:
    source = writer.source
    control_id = writer.control_id()
    segments = [
        _msh(writer, sent, f"ADT^{trigger}^ADT_A01", control_id),
        f"EVN|{trigger}|{_hl7_time(sent, source)}",
        _pid(registration, shared_id_system),
        "PV1|1|O",
    ]
    for number, allergy in enumerate(registration.allergies, 1):
        substance = allergy.substance
        severity = "SV" if allergy.criticality == "high" else "MI"
        segments.append(
            f"AL1|{number}|{substance.hl7_type}|{substance.code}^{hl7_escape(substance.display)}"
            f"^{substance.hl7_system}|{severity}|{hl7_escape(allergy.reaction.display)}|"
            f"{allergy.recorded:%Y%m%d}"
        )
    # DG1 has no clinical status: a registration system sends the active diagnoses only.
    active = [c for c in registration.conditions if c.status == "active"]
    for number, condition in enumerate(active, 1):
        concept = condition.concept
        if source.style.condition_system == "snomed":
            code, system = concept.snomed, "SCT"
        else:
            code, system = concept.icd10, "I10"
        segments.append(
            f"DG1|{number}||{code}^{hl7_escape(concept.display)}^{system}||"
            f"{condition.onset:%Y%m%d}|F"
        )
    message_type = f"ADT^{trigger}"
    return Rendered(
        message_type,
        f"{message_type}/{control_id}",
        sent,
        _message_text(segments),
        registration,
    )


def _oru(
    writer: SourceWriter, registration: Registration, draw: LabDraw, shared_id_system: str
) -> Rendered:
    source = writer.source
    control_id = writer.control_id()
    sent = draw.taken + _REPORTED_AFTER
    taken = _hl7_time(draw.taken, source)
    panel = draw.results[0].test.panel
    segments = [
        _msh(writer, sent, "ORU^R01^ORU_R01", control_id),
        _pid(registration, shared_id_system),
        f"OBR|1||{draw.draw_id}|{panel}|||{taken}",
    ]
    for number, result in enumerate(draw.results, 1):
        unit = reported_unit(result.test, source)
        value = f"{value_in(result, unit):.{unit.decimals}f}"
        low = round(result.test.low * unit.factor, 2)
        high = round(result.test.high * unit.factor, 2)
        reference = f"{low:g}-{high:g}" if result.test.low > 0 else f"<{high:g}"
        segments.append(
            f"OBX|{number}|NM|{unit.loinc}^{hl7_escape(unit.display)}^LN||{value}|"
            f"{unit.unit}^{unit.unit}^UCUM|{reference}|{_flag(result)}|||F|||{taken}"
        )
    return Rendered("ORU^R01", f"ORU^R01/{control_id}", sent, _message_text(segments), registration)


def _text_message(
    writer: SourceWriter, registration: Registration, note: NoteFact, shared_id_system: str
) -> Rendered:
    """A pathology report as an ORU^R01 (OBR-24 SP, one OBX TX per line), a note as an
    MDM^T02 (TXA, one OBX TX per line): narratives.py's messages, with this source's MSH and
    the registration's PID."""
    control_id = note.document_id or writer.control_id()
    document = _narrative(note.document_id or f"{writer.source.mrn_prefix}D{control_id}", note)
    if note.kind == narratives.PATHOLOGY:
        message_type, structure = "ORU^R01", "ORU_R01"
        text = narratives.to_hl7_oru(document, registration.mrn)
    else:
        message_type, structure = "MDM^T02", "MDM_T02"
        text = narratives.to_hl7_mdm(document, registration.mrn)
    segments = text.split("\r")
    segments[0] = _msh(writer, note.written, f"{message_type}^{structure}", control_id)
    segments = [
        _pid(registration, shared_id_system) if s.startswith("PID|") else s for s in segments
    ]
    return Rendered(
        message_type,
        f"{message_type}/{control_id}",
        note.written,
        _message_text(segments),
        registration,
    )


def _message_text(segments: list[str]) -> str:
    # Segments end with CR as HL7 says; the LF after the last one only keeps the file
    # readable in an editor (concord publish reads any line end).
    return "\r".join(segments) + "\r\n"


# --- claim lines -----------------------------------------------------------------------------

CLAIM_LINE = "ClaimLine"
# NPIs with a valid check digit (the CMS example's and one more), for the rendering provider.
_NPIS = ("1234567893", "1497758544")


def _claim_lines(
    writer: SourceWriter, registration: Registration, shared_id_system: str
) -> list[Rendered]:
    """What a payer was billed for the registration's cancers and active conditions: one
    office visit claim of one line, whose diagnoses are the cancers (the first is the
    principal one, then codes billed with it such as Z17.0 or a C78/C79 secondary) and the
    conditions in ICD-10-CM. A payer holds no Patient, allergies or results: a registration
    with nothing to bill sends nothing."""
    codes = [(t.icd10, t.asserted) for t in registration.tumors]
    codes += [
        (c.concept.icd10, datetime.combine(c.onset, datetime.min.time(), writer.source.zone))
        for c in registration.conditions
        if c.status == "active"
    ]
    if not codes:
        return []
    source = writer.source
    rng = writer.rng
    # Adjudicated when the source says it (the latest of its codes), submitted days before,
    # for a visit a few days before that.
    adjudicated = max(moment for _, moment in codes).astimezone(source.zone)
    submitted = adjudicated - timedelta(days=rng.randint(3, 10), minutes=rng.randrange(600))
    served = (submitted - timedelta(days=rng.randint(1, 5))).date()
    writer.counter += 1
    claim_id = f"{source.mrn_prefix}{served.year}-{writer.counter:07d}"
    seen: list[str] = []
    for code, _ in codes:
        if code not in seen:
            seen.append(code)
    diagnoses = [
        {"code": code, "system": ICD10_CM, "sequence": number}
        for number, code in enumerate(seen[:25], 1)
    ]
    line: dict[str, Any] = {
        "claim_id": claim_id,
        "line_number": 1,
        "claim_version": "1",
        "status": "original",
        "patient": _claim_patient(registration, shared_id_system),
        "payer": {"id": source.assigning_authority, "name": _payer_name(source)},
        "service_date_from": served.isoformat(),
        "service_date_to": served.isoformat(),
        "submitted_at": submitted.isoformat(timespec="seconds"),
        "adjudicated_at": adjudicated.isoformat(timespec="seconds"),
        "place_of_service": "11",
        "rendering_npi": rng.choice(_NPIS),
        "diagnoses": diagnoses,
        "diagnosis_pointers": [d["sequence"] for d in diagnoses[:4]],
        "procedure": {"code": "99214", "system": "http://www.ama-assn.org/go/cpt", "units": 1},
        "billed_amount": 185.0,
        "paid_amount": round(rng.uniform(90, 160), 2),
    }
    return [
        Rendered(
            CLAIM_LINE,
            f"{CLAIM_LINE}/{claim_id}/1",
            adjudicated,
            _dumps(line),
            registration,
        )
    ]


def _claim_patient(registration: Registration, shared_id_system: str) -> dict[str, Any]:
    """The member as the payer holds them: the enterprise id where the registration carries
    it, else the member id under the payer's member system; name, birth date and sex."""
    demographics = registration.demographics
    if registration.shared_id:
        identifiers = [{"system": shared_id_system, "value": registration.person_id}]
    else:
        identifiers = [{"system": registration.source.mrn_system, "value": registration.mrn}]
    patient: dict[str, Any] = {"identifiers": identifiers, "member_id": registration.mrn}
    if demographics.family:
        patient["family"] = demographics.family
    given = [g for g in demographics.given if g]
    if given:
        patient["given"] = given
    patient["birth_date"] = demographics.birth_date.isoformat()
    if demographics.sex:
        patient["sex"] = demographics.sex
    return patient


def _payer_name(source: SourceSpec) -> str:
    words = [w for w in re.split(r"[-._]", source.name) if w]
    return " ".join(w.capitalize() for w in words) + " Health Plan"
