"""Identity across formats on the public samples (issue 13, item 3): each HL7 v2 message and
its FHIR twin that carry the same MRN or SSN (PID-3 or PID-19) or driver's licence (PID-20)
are linked by that identifier, shown in the score's breakdown, even when the twin's birth
date is planted apart; and the two birth dates then disagree under one patient."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from concord.conflicts.policy import DEFAULT_POLICY
from concord.conflicts.rules import AttributeState, apply_fact, evaluate
from concord.events.models import ClinicalFact, Provenance
from concord.hl7v2 import er7
from concord.normalization.identity import (
    Decision,
    Field,
    InMemoryIdentityIndex,
    KnownPerson,
    Level,
    from_fhir_patient,
    from_pid,
    match,
)

pytestmark = pytest.mark.shared_data

SAMPLES = Path(__file__).resolve().parents[3] / "shared" / "data" / "fhir-converter-samples"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _twins() -> list[tuple[str, er7.Segment, dict[str, Any]]]:
    pairs = []
    for hl7 in sorted((SAMPLES / "hl7v2").glob("*.hl7")):
        pid = er7.parse(hl7.read_bytes()).first("PID")
        twins = list((SAMPLES / "fhir-expected").rglob(f"{hl7.stem}-expected.json"))
        if pid is None or not twins:
            continue
        bundle = orjson.loads(twins[0].read_bytes())
        patients = [
            e["resource"] for e in bundle.get("entry", ())
            if e.get("resource", {}).get("resourceType") == "Patient"
        ]  # fmt: skip
        if patients:
            pairs.append((hl7.stem, pid, patients[0]))
    return pairs


def _birth_fact(source: str, value: str) -> ClinicalFact:
    return ClinicalFact(
        fact_id=f"{source}-birth",
        patient_id="E-twin",
        attribute="Patient.birthDate",
        attribute_class="DEMOGRAPHICS",
        value=value,
        status="ASSERTED",
        provenance=Provenance(
            source_system=source,
            source_record_id="Patient/1",
            event_time=T0,
            received_time=T0,
            raw_topic="ehr.raw.fhir",
            raw_partition=0,
            raw_offset=0,
            payload_sha256="00" * 32,
        ),
    )


def test_twins_sharing_an_identifier_link_by_it_when_the_birth_date_is_planted_apart() -> None:
    pairs = _twins()
    if not pairs:
        pytest.skip(f"NOT RUN: the public samples are absent ({SAMPLES} not found)")
    linked = 0
    for name, pid, patient in pairs:
        hl7 = from_pid(pid, "v2-source")
        planted = {**patient, "birthDate": "1901-02-03"}
        fhir = from_fhir_patient(planted, "fhir-source")
        if not hl7.keys.identifiers & fhir.keys.identifiers:
            continue  # the twin carries none of the message's identifiers as one system
        index = InMemoryIdentityIndex([KnownPerson(enterprise_id="E-twin", demographics=(hl7,))])
        decision = match(fhir, index)
        terms = {t.field: t for t in decision.breakdown}
        assert terms[Field.IDENTIFIERS].level is Level.SHARED, name
        assert decision.kind is Decision.LINK, (name, decision.score)
        assert terms.get(Field.BIRTH_DATE) is None or terms[Field.BIRTH_DATE].level in (
            Level.DIFFERENT, Level.MISSING, Level.SAME_YEAR,
        ), name  # fmt: skip
        if hl7.birth_date:
            state = AttributeState("E-twin", "Patient.birthDate", "DEMOGRAPHICS")
            apply_fact(state, _birth_fact("v2-source", hl7.birth_date))
            apply_fact(state, _birth_fact("fhir-source", "1901-02-03"))
            event = evaluate(state, DEFAULT_POLICY, now=T0, trigger_received_time=T0)
            assert event is not None and event.kind == "OPENED", name
        linked += 1
    print(f"\n{linked} of {len(pairs)} sample pairs share an identifier and link by it")
    assert linked >= len(pairs) // 2


def test_pid_19_and_pid_20_tie_twins_that_pid_3_does_not() -> None:
    """MDM-T01-01 sends its SSN only in PID-19 (111-22-3333: the twin's us-ssn), and
    ORU-R01-RMGEAD its licence only in PID-20 (67-A4335^OH: the twin's .../CodeSystem/OH);
    neither's PID-3 has a system the twin shares. OUL-R22-01's PID-19 is 000-00-0000, the
    twin's us-ssn too: a placeholder, which ties nothing."""
    pairs = {name: (pid, patient) for name, pid, patient in _twins()}
    if not pairs:
        pytest.skip(f"NOT RUN: the public samples are absent ({SAMPLES} not found)")
    expected = {
        "MDM-T01-01": {("http://hl7.org/fhir/sid/us-ssn", "111223333")},
        "ORU-R01-RMGEAD": {("OH", "67-A4335")},
        "OUL-R22-01": set(),
    }
    for name, shared in expected.items():
        pid, patient = pairs[name]
        hl7 = from_pid(pid, "v2-source")
        fhir = from_fhir_patient(patient, "fhir-source")
        assert hl7.keys.identifiers & fhir.keys.identifiers == shared, name
