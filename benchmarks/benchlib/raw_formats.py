"""The input of part 3 of pipeline.py: clinical FHIR R4 resources (Patients, Observations,
Conditions and transaction Bundles of the three) and HL7 v2 messages (ADT^A01, ORU^R01)."""

from __future__ import annotations

import uuid
from datetime import date, datetime, timedelta, timezone
from typing import Any

import orjson

from concord.config import DEFAULT_ENTERPRISE_ID_SYSTEM

LOINC, UCUM = "http://loinc.org", "http://unitsofmeasure.org"
SNOMED_CT, ICD10_CM = "http://snomed.info/sct", "http://hl7.org/fhir/sid/icd-10-cm"
TERMINOLOGY = "http://terminology.hl7.org/CodeSystem"
# (LOINC with a valid check digit, display, UCUM unit, reference range low, high)
LABS = (
    ("2345-7", "Glucose [Mass/volume] in Serum or Plasma", "mg/dL", 70.0, 99.0),
    ("2951-2", "Sodium [Moles/volume] in Serum or Plasma", "mmol/L", 136.0, 145.0),
    ("2823-3", "Potassium [Moles/volume] in Serum or Plasma", "mmol/L", 3.5, 5.1),
    ("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", 0.6, 1.3),
    ("718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", 12.0, 17.5),
    ("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "%", 4.0, 5.6),
)
# (SNOMED CT concept, its display, the ICD-10-CM code billed for it, its display)
PROBLEMS = (
    ("44054006", "Diabetes mellitus type 2", "E11.9", "Type 2 diabetes mellitus w/o complications"),
    ("38341003", "Hypertensive disorder", "I10", "Essential (primary) hypertension"),
    ("195967001", "Asthma", "J45.909", "Unspecified asthma, uncomplicated"),
    ("55822004", "Hyperlipidemia", "E78.5", "Hyperlipidemia, unspecified"),
    ("35489007", "Depressive disorder", "F32.9", "Major depressive disorder, single episode"),
)
ALLERGENS = (
    ("70618", "Penicillin"),
    ("2670", "Codeine"),
    ("1191", "Aspirin"),
    ("7052", "Morphine"),
)
FAMILIES = ("Testperson", "Fakeworth", "Samplesson", "Mockridge", "Placeholder")
GIVEN = ("Alex", "Robin", "Sam", "Jordan", "Casey", "Quinn")


def _family(i: int) -> str:
    """A family name of its own for each patient, as a hospital's patients mostly have: a base
    name and letters from the patient's number. With only the five base names (and a phone
    shared by a hundred patients), identity's blocks held thousands of candidates each, a
    population no registry has (issue 17's end-to-end run)."""
    letters = ""
    n = i // 5 + 1
    while n:
        n, r = divmod(n - 1, 26)
        letters = "abcdefghijklmnopqrstuvwxyz"[r] + letters
    return f"{FAMILIES[i % 5]}{letters}"


def _phone_digits(i: int) -> str:
    return f"{i % 10_000_000:07d}"  # one number a patient, 555-xxxxxxx


# Every timestamp carries its offset: a zone-less one would be dead-lettered without a
# configured source zone, and this part measures ingestion, not rejection.
FORMAT_EPOCH = datetime(2026, 1, 5, 8, 0, tzinfo=timezone(timedelta(hours=-5)))


def _moment(i: int, minutes: int = 0) -> datetime:
    return FORMAT_EPOCH + timedelta(seconds=i, minutes=minutes)


def _birth_date(i: int) -> date:
    return date(1940, 1, 1) + timedelta(days=(i * 7) % 25_000)


def fhir_patient(pid: str, i: int) -> dict[str, Any]:
    mr = {"coding": [{"system": f"{TERMINOLOGY}/v2-0203", "code": "MR"}]}
    return {
        "resourceType": "Patient",
        "id": pid,
        "meta": {"versionId": "1", "lastUpdated": _moment(i).isoformat()},
        "identifier": [
            {"use": "usual", "type": mr, "system": "urn:bench:mrn", "value": f"MRN-{pid}"},
            {"system": DEFAULT_ENTERPRISE_ID_SYSTEM, "value": f"EP-{pid}"},
        ],
        "active": True,
        "name": [{"use": "official", "family": _family(i), "given": [GIVEN[i % 6]]}],
        "telecom": [{"system": "phone", "value": f"+1-555-{_phone_digits(i)}", "use": "home"}],
        "gender": ("female", "male")[i % 2],
        "birthDate": _birth_date(i).isoformat(),
        "address": [
            {
                "use": "home",
                "line": [f"{i % 900 + 1} Example Lane"],
                "city": "Exampleton",
                "postalCode": f"{10_000 + i % 90_000}",
                "country": "ZZ",
            }
        ],
    }


def fhir_observation(oid: str, patient: str, i: int) -> dict[str, Any]:
    code, display, unit, low, high = LABS[i % len(LABS)]
    value = round(low + (high - low) * ((i * 37) % 140) / 100, 1)  # a few are high
    quantity = {"unit": unit, "system": UCUM, "code": unit}
    return {
        "resourceType": "Observation",
        "id": oid,
        "meta": {"versionId": "1", "lastUpdated": _moment(i, 45).isoformat()},
        "status": "final",
        "category": [
            {"coding": [{"system": f"{TERMINOLOGY}/observation-category", "code": "laboratory"}]}
        ],
        "code": {"coding": [{"system": LOINC, "code": code, "display": display}], "text": display},
        "subject": {"reference": patient},
        "effectiveDateTime": _moment(i).isoformat(),
        "issued": _moment(i, 45).isoformat(),
        "valueQuantity": {"value": value, **quantity},
        "interpretation": [
            {
                "coding": [
                    {
                        "system": f"{TERMINOLOGY}/v3-ObservationInterpretation",
                        "code": "H" if value > high else "N",
                    }
                ]
            }
        ],
        "referenceRange": [
            {"low": {"value": low, **quantity}, "high": {"value": high, **quantity}}
        ],
    }


def fhir_condition(cid: str, patient: str, i: int) -> dict[str, Any]:
    sct, sct_display, icd, icd_display = PROBLEMS[i % len(PROBLEMS)]
    return {
        "resourceType": "Condition",
        "id": cid,
        "meta": {"versionId": "1", "lastUpdated": _moment(i, 10).isoformat()},
        "clinicalStatus": {
            "coding": [{"system": f"{TERMINOLOGY}/condition-clinical", "code": "active"}]
        },
        "verificationStatus": {
            "coding": [{"system": f"{TERMINOLOGY}/condition-ver-status", "code": "confirmed"}]
        },
        "category": [
            {
                "coding": [
                    {"system": f"{TERMINOLOGY}/condition-category", "code": "problem-list-item"}
                ]
            }
        ],
        "code": {
            "coding": [
                {"system": SNOMED_CT, "code": sct, "display": sct_display},
                {"system": ICD10_CM, "code": icd, "display": icd_display},
            ],
            "text": sct_display,
        },
        "subject": {"reference": patient},
        "onsetDateTime": (_birth_date(i) + timedelta(days=365 * 30)).isoformat(),
        "recordedDate": _moment(i, 10).isoformat(),
    }


def fhir_bundle(prefix: str, i: int) -> dict[str, Any]:
    """A transaction Bundle as an EHR sends a visit: the Patient, two results and a problem,
    referring to each other by urn:uuid, as ingestion must resolve and rewrite them."""
    pid, urn = f"{prefix}-bp", f"urn:uuid:{uuid.uuid4()}"
    resources = [
        fhir_patient(pid, i),
        fhir_observation(f"{prefix}-bo1", urn, i),
        fhir_observation(f"{prefix}-bo2", urn, i + 1),
        fhir_condition(f"{prefix}-bc", urn, i),
    ]
    entries = []
    for n, resource in enumerate(resources):
        kind = resource["resourceType"]
        entries.append(
            {
                "fullUrl": urn if n == 0 else f"urn:uuid:{uuid.uuid4()}",
                "resource": resource,
                "request": {"method": "PUT", "url": f"{kind}/{resource['id']}"},
            }
        )
    return {
        "resourceType": "Bundle",
        "id": f"{prefix}-b",
        "type": "transaction",
        "timestamp": _moment(i, 50).isoformat(),
        "entry": entries,
    }


def fhir_events(prefix: str, count: int) -> tuple[list[bytes], int]:
    """`count` raw FHIR events, in turn a Patient, an Observation and a Condition about it, and
    a transaction Bundle of four; returns them and how many records they hold."""
    events, records = [], 0
    for i in range(count):
        rid, patient = f"{prefix}{i:07d}", f"Patient/{prefix}{i - i % 4:07d}-p"
        kind = i % 4
        if kind == 0:
            document = fhir_patient(f"{rid}-p", i)
        elif kind == 1:
            document = fhir_observation(f"{rid}-o", patient, i)
        elif kind == 2:
            document = fhir_condition(f"{rid}-c", patient, i)
        else:
            document = fhir_bundle(rid, i)
        events.append(orjson.dumps(document))
        records += 4 if kind == 3 else 1
    return events, records


def _hl7_time(moment: datetime) -> str:
    return moment.strftime("%Y%m%d%H%M%S%z")


def _segment(name: str, fields: dict[int, str]) -> str:
    return "|".join([name, *(fields.get(n, "") for n in range(1, max(fields) + 1))])


def hl7_message(prefix: str, i: int) -> bytes:
    """ADT^A01 (an admission) for even i, ORU^R01 (a chemistry panel) for odd i; MSH-10 is
    unique, so each message is a new record to de-duplication. Each patient (k) is admitted,
    then has results."""
    k = i // 2
    control, mrn, sent = f"{prefix}{i:07d}", f"{prefix}M{k:07d}", _hl7_time(_moment(i, 60))
    pid = _segment(
        "PID",
        {
            1: "1",
            3: f"{mrn}^^^BENCHHOSP^MR~EP-{mrn}^^^CONCORD^PI",
            5: f"{_family(k).upper()}^{GIVEN[k % 6].upper()}^^^^^L",
            7: _birth_date(k).strftime("%Y%m%d"),
            8: "FM"[k % 2],
            11: f"{k % 900 + 1} EXAMPLE LANE^^EXAMPLETON^^{10_000 + k % 90_000}^ZZ^H",
            13: f"^PRN^PH^^^555^{_phone_digits(k)}",
        },
    )
    if i % 2 == 0:
        occurred = _hl7_time(_moment(i, 55))
        allergen = ALLERGENS[i % len(ALLERGENS)]
        _, _, icd, icd_display = PROBLEMS[i % len(PROBLEMS)]
        segments = [
            f"MSH|^~\\&|BENCHADT|BENCHHOSP|CONCORD|CONCORD|{sent}||ADT^A01^ADT_A01|{control}"
            "|P|2.5.1|||AL|NE",
            _segment("EVN", {1: "A01", 2: sent, 5: "BENCHOP", 6: occurred}),
            pid,
            _segment(
                "PV1",
                {
                    1: "1",
                    2: "I",
                    3: f"WARD{i % 8}^{i % 40:03d}^{'AB'[i % 2]}^BENCHHOSP",
                    7: "9001^ATTENDING^PAT^^^^MD",
                    10: "MED",
                    19: f"V{control}",
                    44: occurred,
                },
            ),
            _segment("AL1", {1: "1", 2: "DA", 3: f"{allergen[0]}^{allergen[1]}^RXNORM", 4: "MO"}),
            _segment("DG1", {1: "1", 3: f"{icd}^{icd_display}^I10", 5: occurred, 6: "A"}),
        ]
    else:
        collected, received = _hl7_time(_moment(i)), _hl7_time(_moment(i, 20))
        order = f"ORD{control}"
        segments = [
            f"MSH|^~\\&|BENCHLIS|BENCHLAB|CONCORD|CONCORD|{sent}||ORU^R01^ORU_R01|{control}"
            "|P|2.5.1|||AL|NE",
            pid,
            _segment("ORC", {1: "RE", 2: order, 3: f"FIL{control}"}),
            _segment(
                "OBR",
                {
                    1: "1",
                    2: order,
                    3: f"FIL{control}",
                    4: "24323-8^Comprehensive metabolic panel^LN",
                    7: collected,
                    14: received,
                    16: "9002^ORDERING^PAT^^^^MD",
                    22: sent,
                    24: "CH",
                    25: "F",
                },
            ),
        ]
        for n, (code, display, unit, low, high) in enumerate(LABS[:4], start=1):
            value = round(low + (high - low) * ((i * 37 + n * 11) % 140) / 100, 1)
            flag = "H" if value > high else "N"
            segments.append(
                _segment(
                    "OBX",
                    {
                        1: str(n),
                        2: "NM",
                        3: f"{code}^{display}^LN",
                        5: f"{value:g}",
                        6: f"{unit}^{unit}^UCUM",
                        7: f"{low:g}-{high:g}",
                        8: flag,
                        11: "F",
                        14: collected,
                    },
                )
            )
    return ("\r".join(segments) + "\r").encode()


def hl7_events(prefix: str, count: int) -> tuple[list[bytes], int]:
    """`count` HL7 v2 messages, ADT^A01 and ORU^R01 in turn; one record each."""
    return [hl7_message(prefix, i) for i in range(count)], count
